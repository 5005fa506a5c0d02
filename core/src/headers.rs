//! Message headers: string names to string values.
//!
//! Names starting with [`RESERVED_PREFIX`] belong to courier (correlation and
//! causation ids, dead-letter details, wire fields). Inserting such a name
//! through [`Headers::insert`] is an error rather than a silent overwrite.
//! Received from a foreign producer (not courier), such names are not
//! trusted: adapters leave them out
//! ([`adapter::origin`](crate::adapter::origin)).
//!
//! Limits that hold on every broker: a name is 1 to [`MAX_NAME_LEN`] visible
//! ASCII characters other than `:`; a value is any UTF-8 without `\r` or `\n`
//! (NATS headers are line-based), and may be empty; all names and values
//! together take at most [`MAX_TOTAL_LEN`] bytes.
//!
//! Headers are shared between clones until one of them is changed (copy on
//! write), so cloning a message (for a handler, a retry, each group of a
//! topic) copies no header.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Prefix of header names reserved for courier itself.
pub const RESERVED_PREFIX: &str = "courier-";
/// Longest header name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Largest total size of all header names and values, in bytes.
pub const MAX_TOTAL_LEN: usize = 64 * 1024;

/// courier's own header names, kept without a copy when inserted. A
/// reserved name not listed here still works; it is only copied.
const RESERVED: [&str; 21] = [
    "courier-correlation-id",
    "courier-causation-id",
    "courier-request-id",
    "courier-reply-to",
    "courier-deadline-ms",
    "courier-reply-status",
    "courier-error-kind",
    "courier-error-reason",
    "courier-id",
    "courier-key",
    "courier-content-type",
    "courier-timestamp-ms",
    "courier-dlq-reason",
    "courier-dlq-original-topic",
    "courier-dlq-group",
    "courier-dlq-attempts",
    "courier-dlq-first-failure-ms",
    "courier-dlq-last-failure-ms",
    "courier-prior-deliveries",
    "traceparent",
    "tracestate",
];

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The name is empty, too long, or contains a character other than
    /// visible ASCII without `:`.
    #[error("invalid header name {0:?}: names are 1 to 256 visible ASCII characters without ':'")]
    InvalidName(String),
    /// The name starts with the reserved prefix `courier-`.
    #[error("header name {0:?} uses the reserved prefix \"courier-\"")]
    Reserved(String),
    /// The value contains a carriage return or a line feed.
    #[error("value of header {0:?} contains a line break")]
    InvalidValue(String),
    /// All headers together would exceed [`MAX_TOTAL_LEN`].
    #[error("headers would take {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Size the headers would have.
        size: usize,
        /// The limit, [`MAX_TOTAL_LEN`].
        limit: usize,
    },
    /// A header arrived from a broker with a value that is not UTF-8.
    #[error("value of header {0:?} is not UTF-8")]
    NotUtf8(String),
}

/// 1 to [`MAX_NAME_LEN`] visible ASCII characters other than `:`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Whether `text` holds a CR or LF. By bytes: both are ASCII, and a byte
/// test costs a fraction of a multi-char pattern's on every header of
/// every message.
pub(crate) fn has_line_break(text: &str) -> bool {
    text.bytes().any(|b| b == b'\r' || b == b'\n')
}

/// One header: its name (courier's own names not copied) and value.
type Entry = (Cow<'static, str>, String);

/// An ordered map of header names to values with courier's limits enforced.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Sorted by name, without duplicates; `None` when empty (so equal
    /// headers compare equal), shared by clones. courier's own names are
    /// kept as `'static` strings ([`RESERVED`]): most messages carry one
    /// or two, and a name that is not copied is one allocation less on
    /// every publish and receive. A sorted list rather than a tree: a
    /// message carries a handful of headers, which a list holds in one
    /// allocation, finds by binary search and frees at once.
    map: Option<Arc<Vec<Entry>>>,
    size: usize,
}

impl Headers {
    /// Empty headers (no allocation).
    pub const fn new() -> Self {
        Headers { map: None, size: 0 }
    }

    /// Inserts a user header, replacing an earlier value of the same name.
    ///
    /// # Errors
    ///
    /// [`HeaderError`] if the name is invalid or reserved, the value has a
    /// line break, or the headers would grow past [`MAX_TOTAL_LEN`].
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), HeaderError> {
        let name = name.into();
        if name.starts_with(RESERVED_PREFIX) {
            return Err(HeaderError::Reserved(name));
        }
        self.insert_checked(Cow::Owned(name), value.into())
    }

    /// Inserts a header whose name may use the reserved prefix: adapters
    /// restoring wire headers (through
    /// [`adapter::restore_header`](crate::adapter::restore_header)), the
    /// runtime adding dead-letter details.
    ///
    /// # Errors
    ///
    /// As [`Headers::insert`], except that reserved names are accepted.
    pub(crate) fn insert_reserved(
        &mut self,
        name: impl AsRef<str> + Into<String>,
        value: impl Into<String>,
    ) -> Result<(), HeaderError> {
        let name = match RESERVED.iter().find(|known| **known == name.as_ref()) {
            Some(known) => Cow::Borrowed(*known),
            None => Cow::Owned(name.into()),
        };
        self.insert_checked(name, value.into())
    }

    /// Whether one header, on its own, is within the rules: a valid name
    /// (any prefix) and value, and together no larger than
    /// [`MAX_TOTAL_LEN`]. Borrows only: an adapter judging a received
    /// header before it keeps it allocates nothing for a header it keeps
    /// ([`adapter::origin::carriable`](crate::adapter::origin::carriable)).
    pub(crate) fn check(name: &str, value: &str) -> Result<(), HeaderError> {
        if !valid_name(name) {
            return Err(HeaderError::InvalidName(name.to_owned()));
        }
        if has_line_break(value) {
            return Err(HeaderError::InvalidValue(name.to_owned()));
        }
        let size = name.len() + value.len();
        if size > MAX_TOTAL_LEN {
            return Err(HeaderError::TooLarge {
                size,
                limit: MAX_TOTAL_LEN,
            });
        }
        Ok(())
    }

    fn insert_checked(
        &mut self,
        name: Cow<'static, str>,
        value: String,
    ) -> Result<(), HeaderError> {
        // courier's own names are known to be valid.
        let known = matches!(name, Cow::Borrowed(_));
        if !known && !valid_name(&name) {
            return Err(HeaderError::InvalidName(name.into_owned()));
        }
        if has_line_break(&value) {
            return Err(HeaderError::InvalidValue(name.into_owned()));
        }
        let found = self.find(&name);
        let old = match (&found, self.map.as_deref()) {
            (Ok(at), Some(map)) => name.len() + map[*at].1.len(),
            _ => 0,
        };
        let size = self.size - old + name.len() + value.len();
        if size > MAX_TOTAL_LEN {
            return Err(HeaderError::TooLarge {
                size,
                limit: MAX_TOTAL_LEN,
            });
        }
        self.size = size;
        let map = Arc::make_mut(
            self.map
                .get_or_insert_with(|| Arc::new(Vec::with_capacity(4))),
        );
        match found {
            Ok(at) => map[at].1 = value,
            Err(at) => map.insert(at, (name, value)),
        }
        Ok(())
    }

    /// Where `name` is in the list (`Ok`), or where it would go (`Err`).
    fn find(&self, name: &str) -> Result<usize, usize> {
        match self.map.as_deref() {
            Some(map) => map.binary_search_by(|(k, _)| k.as_ref().cmp(name)),
            None => Err(0),
        }
    }

    /// The value of a header.
    pub fn get(&self, name: &str) -> Option<&str> {
        let at = self.find(name).ok()?;
        Some(self.map.as_deref()?[at].1.as_str())
    }

    /// Removes a header and returns its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let at = self.find(name).ok()?;
        let map = Arc::make_mut(self.map.as_mut()?);
        let (_, value) = map.remove(at);
        if map.is_empty() {
            self.map = None;
        }
        self.size -= name.len() + value.len();
        Some(value)
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.map.as_deref().map_or(0, Vec::len)
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.map.is_none()
    }

    /// Total bytes of all names and values.
    pub fn byte_size(&self) -> usize {
        self.size
    }

    /// All headers, in name order, reserved ones included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map
            .iter()
            .flat_map(|map| map.iter())
            .map(|(k, v)| (k.as_ref(), v.as_str()))
    }

    /// The headers an application set, without courier's reserved ones.
    pub fn user(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter().filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a str)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_until_one_is_changed() {
        let mut original = Headers::new();
        original.insert("tenant", "acme").unwrap();
        let mut copy = original.clone();
        copy.insert("tenant", "globex").unwrap();
        assert_eq!(original.get("tenant"), Some("acme"));
        assert_eq!(copy.get("tenant"), Some("globex"));
        assert_eq!(copy.remove("tenant").as_deref(), Some("globex"));
        assert_eq!(copy, Headers::new());
        assert_eq!((copy.len(), copy.byte_size()), (0, 0));
        assert_eq!(original.len(), 1);
        assert_eq!(original.remove("absent"), None);
    }

    #[test]
    fn courier_names_are_kept_without_a_copy() {
        use crate::adapter::wire;
        use crate::delivery::{
            DLQ_ATTEMPTS, DLQ_FIRST_FAILURE, DLQ_GROUP, DLQ_LAST_FAILURE, DLQ_ORIGINAL_TOPIC,
            DLQ_REASON,
        };
        use crate::message::{CAUSATION_ID, CORRELATION_ID};
        use crate::request::headers::{
            DEADLINE, ERROR_KIND, ERROR_REASON, REPLY_STATUS, REPLY_TO, REQUEST_ID,
        };
        use crate::telemetry::{TRACEPARENT, TRACESTATE};
        let names = [
            CORRELATION_ID,
            CAUSATION_ID,
            REQUEST_ID,
            REPLY_TO,
            DEADLINE,
            REPLY_STATUS,
            ERROR_KIND,
            ERROR_REASON,
            wire::ID,
            wire::KEY,
            wire::CONTENT_TYPE,
            wire::TIMESTAMP,
            DLQ_REASON,
            DLQ_ORIGINAL_TOPIC,
            DLQ_GROUP,
            DLQ_ATTEMPTS,
            DLQ_FIRST_FAILURE,
            DLQ_LAST_FAILURE,
            TRACEPARENT,
            TRACESTATE,
        ];
        let mut headers = Headers::new();
        for name in names {
            // Given as an owned copy, as an adapter reading a wire header.
            headers.insert_reserved(name.to_owned(), "v").unwrap();
        }
        headers.insert_reserved("courier-unlisted", "v").unwrap();
        let map = headers.map.as_deref().unwrap();
        for (name, _) in map {
            let kept = matches!(name, Cow::Borrowed(_));
            assert_eq!(kept, name != "courier-unlisted", "{name}");
        }
        assert_eq!(map.len(), names.len() + 1);
        assert_eq!(headers.get(CORRELATION_ID), Some("v"));
    }

    #[test]
    fn reserved_names_are_refused() {
        let mut h = Headers::new();
        assert_eq!(
            h.insert("courier-correlation-id", "x"),
            Err(HeaderError::Reserved("courier-correlation-id".into()))
        );
        assert!(h.is_empty());
    }

    #[test]
    fn invalid_names_and_values_are_refused() {
        let mut h = Headers::new();
        for name in ["", "a b", "a:b", "é", &"n".repeat(257)] {
            assert!(
                matches!(h.insert(name, "v"), Err(HeaderError::InvalidName(_))),
                "{name:?}"
            );
        }
        assert_eq!(
            h.insert("a", "x\ny"),
            Err(HeaderError::InvalidValue("a".into()))
        );
        assert!(h.is_empty());
    }

    #[test]
    fn headers_are_kept_in_name_order_whatever_the_order_of_inserts() {
        let mut h = Headers::new();
        for (name, value) in [("m", "1"), ("z", "2"), ("a", "3"), ("q", "4"), ("b", "5")] {
            h.insert(name, value).unwrap();
        }
        h.insert("q", "replaced").unwrap();
        assert_eq!(h.remove("m").as_deref(), Some("1"));
        assert_eq!(h.remove("m"), None);
        assert_eq!(h.get("c"), None);
        let all: Vec<(&str, &str)> = h.iter().collect();
        assert_eq!(all, [("a", "3"), ("b", "5"), ("q", "replaced"), ("z", "2")]);
        assert_eq!(h.byte_size(), 1 + 1 + 1 + 1 + 1 + 8 + 1 + 1);
        let mut same = Headers::new();
        for (name, value) in all.iter().rev() {
            same.insert(*name, *value).unwrap();
        }
        assert_eq!(same, h);
        for name in ["a", "b", "q", "z"] {
            h.remove(name).unwrap();
        }
        assert!(h.is_empty());
        assert_eq!((h.len(), h.byte_size()), (0, 0));
        assert_eq!(h, Headers::new());
    }

    #[test]
    fn one_header_is_judged_as_inserting_it_would_be() {
        let long = "n".repeat(257);
        let too_large = "x".repeat(MAX_TOTAL_LEN);
        let cases: [(&str, &str); 10] = [
            ("tenant", "acme"),
            ("courier-correlation-id", "flow"),
            ("empty", ""),
            ("greeting", "héllo wörld ✓"),
            ("", "v"),
            ("a b", "v"),
            ("é", "v"),
            (&long, "v"),
            ("a", "x\ny"),
            ("a", &too_large),
        ];
        for (name, value) in cases {
            let inserted = Headers::new().insert_reserved(name, value);
            assert_eq!(Headers::check(name, value), inserted, "{name:?}: {value:?}");
        }
        assert!(Headers::check("a", &too_large[1..]).is_ok());
    }

    #[test]
    fn unicode_and_empty_values_are_kept() {
        let mut h = Headers::new();
        h.insert("greeting", "héllo wörld ✓").unwrap();
        h.insert("empty", "").unwrap();
        assert_eq!(h.get("greeting"), Some("héllo wörld ✓"));
        assert_eq!(h.get("empty"), Some(""));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn total_size_is_bounded_and_tracked_on_replace() {
        let mut h = Headers::new();
        h.insert("big", "x".repeat(MAX_TOTAL_LEN - 3)).unwrap();
        assert_eq!(h.byte_size(), MAX_TOTAL_LEN);
        let err = h.insert("b", "y").unwrap_err();
        assert_eq!(
            err,
            HeaderError::TooLarge {
                size: MAX_TOTAL_LEN + 2,
                limit: MAX_TOTAL_LEN
            }
        );
        h.insert("big", "small").unwrap();
        assert_eq!(h.byte_size(), 8);
        assert_eq!(h.remove("big").as_deref(), Some("small"));
        assert_eq!(h.byte_size(), 0);
    }
}
