//! Topic and consumer-group names.
//!
//! courier accepts only names every supported broker can carry unchanged, so a
//! handler written against one broker keeps working on another: 1 to 249
//! characters from `A-Z a-z 0-9 . _ -`, not starting or ending with `.`, and
//! without `..`. That is the intersection of Kafka topic names (`[a-zA-Z0-9._-]`,
//! at most 249), NATS subject tokens (`.` separates tokens, so empty tokens are
//! not allowed; `*`, `>` and spaces are wildcards or separators) and AMQP
//! exchange and queue names (at most 255 bytes).

use std::fmt;

/// The longest topic or group name accepted (Kafka's limit).
pub const MAX_NAME_LEN: usize = 249;

/// What kind of name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameKind {
    /// A topic name.
    Topic,
    /// A consumer-group name.
    Group,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Topic => "topic",
            NameKind::Group => "consumer group",
        })
    }
}

/// Why a name was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameProblem {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    TooLong,
    /// The name contains a character outside `A-Z a-z 0-9 . _ -`.
    InvalidChar(char),
    /// The name starts or ends with `.`, or contains `..`.
    EmptySegment,
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameProblem::Empty => f.write_str("it is empty"),
            NameProblem::TooLong => write!(f, "it is longer than {MAX_NAME_LEN} bytes"),
            NameProblem::InvalidChar(c) => write!(
                f,
                "it contains {c:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"
            ),
            NameProblem::EmptySegment => {
                f.write_str("it starts or ends with '.' or contains \"..\"")
            }
        }
    }
}

/// A topic or group name that no broker could carry unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {name:?}: {problem}")]
pub struct InvalidName {
    /// Which kind of name.
    pub kind: NameKind,
    /// The rejected name (cut to [`MAX_NAME_LEN`] + 1 characters).
    pub name: String,
    /// What is wrong with it.
    pub problem: NameProblem,
}

/// Checks a topic name.
///
/// # Errors
///
/// [`InvalidName`] saying what is wrong with the name.
///
/// # Examples
///
/// ```
/// use courier_core::name::validate_topic;
/// assert!(validate_topic("orders.created").is_ok());
/// assert!(validate_topic("orders created").is_err());
/// ```
pub fn validate_topic(name: &str) -> Result<(), InvalidName> {
    validate(NameKind::Topic, name)
}

/// Checks a consumer-group name.
///
/// # Errors
///
/// [`InvalidName`] saying what is wrong with the name.
pub fn validate_group(name: &str) -> Result<(), InvalidName> {
    validate(NameKind::Group, name)
}

fn validate(kind: NameKind, name: &str) -> Result<(), InvalidName> {
    let Some(problem) = problem(name) else {
        return Ok(());
    };
    Err(InvalidName {
        kind,
        name: name.chars().take(MAX_NAME_LEN + 1).collect(),
        problem,
    })
}

/// What is wrong with `name`, if anything. A character outside the
/// allowed set is reported before an empty segment, wherever each is.
fn problem(name: &str) -> Option<NameProblem> {
    if name.is_empty() {
        return Some(NameProblem::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Some(NameProblem::TooLong);
    }
    let bytes = name.as_bytes();
    // The common case, a valid name, in folds over the whole name without
    // an early exit, which are vectorized (every publish checks its
    // topic); the loop below says what is wrong with an invalid one.
    let allowed = bytes.iter().fold(true, |ok, &b| {
        ok & (b.is_ascii_alphanumeric() | (b == b'_') | (b == b'-') | (b == b'.'))
    });
    let double_dot = bytes.windows(2).fold(false, |found, pair| {
        found | ((pair[0] == b'.') & (pair[1] == b'.'))
    });
    if allowed && !double_dot && bytes[0] != b'.' && bytes[bytes.len() - 1] != b'.' {
        return None;
    }
    // A name starting with a dot has an empty first segment.
    let mut after_dot = true;
    let mut empty_segment = false;
    for (at, byte) in name.bytes().enumerate() {
        match byte {
            b'.' => {
                empty_segment |= after_dot;
                after_dot = true;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' => after_dot = false,
            // Every byte before `at` is ASCII, so `at` starts a character.
            _ => return name[at..].chars().next().map(NameProblem::InvalidChar),
        }
    }
    (empty_segment || after_dot).then_some(NameProblem::EmptySegment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_portable_names() {
        for name in [
            "a",
            "orders",
            "orders.created",
            "a-b_c.D9",
            &"x".repeat(249),
        ] {
            assert_eq!(validate_topic(name), Ok(()), "{name}");
        }
    }

    /// The rules as written: the first character outside the set, then
    /// any empty segment.
    fn problem_by_the_rules(name: &str) -> Option<NameProblem> {
        if name.is_empty() {
            Some(NameProblem::Empty)
        } else if name.len() > MAX_NAME_LEN {
            Some(NameProblem::TooLong)
        } else if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            Some(NameProblem::InvalidChar(c))
        } else if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
            Some(NameProblem::EmptySegment)
        } else {
            None
        }
    }

    #[test]
    fn one_pass_agrees_with_the_rules_on_every_short_name() {
        let alphabet = ['a', 'Z', '7', '.', '_', '-', ' ', 'é', '*'];
        let mut names = vec![String::new()];
        let mut last = names.clone();
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|name| alphabet.iter().map(move |c| format!("{name}{c}")))
                .collect();
            names.extend(last.iter().cloned());
        }
        assert_eq!(names.len(), 1 + 9 + 81 + 729 + 6_561);
        for name in &names {
            assert_eq!(problem(name), problem_by_the_rules(name), "{name:?}");
        }
    }

    #[test]
    fn rejects_each_problem_with_its_reason() {
        let cases = [
            ("", NameProblem::Empty),
            (&"x".repeat(250) as &str, NameProblem::TooLong),
            ("a b", NameProblem::InvalidChar(' ')),
            ("a*", NameProblem::InvalidChar('*')),
            ("a>", NameProblem::InvalidChar('>')),
            ("é", NameProblem::InvalidChar('é')),
            (".a", NameProblem::EmptySegment),
            ("a.", NameProblem::EmptySegment),
            ("a..b", NameProblem::EmptySegment),
            (".", NameProblem::EmptySegment),
            // A bad character is named even after an empty segment.
            ("..é", NameProblem::InvalidChar('é')),
            ("a.b.", NameProblem::EmptySegment),
        ];
        for (name, problem) in cases {
            let err = validate_group(name).unwrap_err();
            assert_eq!(err.problem, problem, "{name:?}");
            assert_eq!(err.kind, NameKind::Group);
        }
    }
}
