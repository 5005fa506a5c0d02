//! Keys, claim tokens and the checks every store applies to its input.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// Longest key accepted, in bytes (the scope is counted separately).
pub const MAX_KEY_LEN: usize = 512;

/// Longest scope accepted, in bytes: the longest consumer-group name
/// courier accepts ([`courier_core::name::MAX_NAME_LEN`]).
pub const MAX_SCOPE_LEN: usize = courier_core::name::MAX_NAME_LEN;

/// Longest lease or retention accepted: 10 years.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What a store deduplicates: a key within a scope.
///
/// The scope is the consumer group, so that one service's processing never
/// hides a message from another service: `billing` and `shipping` each
/// handle order 42 once. The key is the message id by default, or a
/// business key (an order number, a payment id) when the same request can
/// arrive as different messages.
///
/// # Examples
///
/// ```
/// use courier_idempotency::IdempotencyKey;
///
/// let key = IdempotencyKey::new("billing", "order-42");
/// assert_eq!(key.scope(), "billing");
/// assert_eq!(key.key(), "order-42");
/// assert_eq!(key.to_string(), "billing/order-42");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdempotencyKey {
    scope: String,
    key: String,
}

impl IdempotencyKey {
    /// A key within a scope. Stores check both when they are used: each must
    /// be 1 to [`MAX_SCOPE_LEN`] / [`MAX_KEY_LEN`] bytes without NUL.
    pub fn new(scope: impl Into<String>, key: impl Into<String>) -> Self {
        IdempotencyKey {
            scope: scope.into(),
            key: key.into(),
        }
    }

    /// The scope (the consumer group).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The key within the scope.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Checks the key as every store does before using it: scope and key 1
    /// to [`MAX_SCOPE_LEN`] / [`MAX_KEY_LEN`] bytes, without NUL. For
    /// implementations of [`IdempotencyStore`](crate::IdempotencyStore).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] naming `store_url` (pass it redacted).
    pub fn check(&self, store_url: &str) -> Result<()> {
        let url = store_url;
        let problem = check_part("scope", &self.scope, MAX_SCOPE_LEN)
            .or_else(|| check_part("key", &self.key, MAX_KEY_LEN));
        match problem {
            None => Ok(()),
            Some(reason) => Err(Error::InvalidKey {
                url: url.to_owned(),
                reason,
            }),
        }
    }
}

fn check_part(what: &str, text: &str, max: usize) -> Option<String> {
    if text.is_empty() {
        Some(format!("the {what} is empty"))
    } else if text.len() > max {
        Some(format!(
            "the {what} is {} bytes long; at most {max} are allowed",
            text.len()
        ))
    } else if text.contains('\0') {
        Some(format!("the {what} contains a NUL character"))
    } else {
        None
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.scope, self.key)
    }
}

/// Checks a lease or retention (`what`) as every store does: at least 1 ms,
/// at most [`MAX_DURATION`]; returns it in whole milliseconds, the unit the
/// stores keep. For implementations of
/// [`IdempotencyStore`](crate::IdempotencyStore).
///
/// # Errors
///
/// [`Error::InvalidDuration`] naming `store_url` (pass it redacted).
pub fn check_duration(store_url: &str, what: &'static str, duration: Duration) -> Result<u64> {
    let url = store_url;
    let reason = if duration < Duration::from_millis(1) {
        "it must be at least 1 ms"
    } else if duration > MAX_DURATION {
        "it must be at most 10 years"
    } else {
        let millis = u64::try_from(duration.as_millis()).expect("at most 10 years");
        return Ok(millis);
    };
    Err(Error::InvalidDuration {
        url: url.to_owned(),
        what,
        duration,
        reason,
    })
}

/// Proof of a claim, returned by [`Claim::Claimed`](crate::Claim::Claimed):
/// pass it to [`complete`](crate::IdempotencyStore::complete) or
/// [`release`](crate::IdempotencyStore::release).
///
/// It fences: once its lease has ended, or another worker has claimed the
/// key, the token no longer completes or releases anything
/// ([`Error::LeaseLost`]). Not `Clone`, so one claim has one owner.
#[derive(Debug)]
pub struct ClaimToken {
    key: IdempotencyKey,
    token: String,
    lease_until: SystemTime,
}

impl ClaimToken {
    /// A token for a claim on `key` held by `owner` (a value unique to this
    /// claim, which the store keeps with it), its lease ending at
    /// `lease_until`. For implementations of
    /// [`IdempotencyStore`](crate::IdempotencyStore).
    pub fn new(key: IdempotencyKey, owner: String, lease_until: SystemTime) -> Self {
        let token = owner;
        ClaimToken {
            key,
            token,
            lease_until,
        }
    }

    /// A new random owner value: a UUID, unique across workers.
    pub fn fresh_owner() -> String {
        uuid::Uuid::now_v7().simple().to_string()
    }

    /// The key claimed.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// When the lease ends (by the store's clock): after it, another worker
    /// may claim the key and this token no longer completes it. For a claim
    /// made inside a transaction, when the done mark expires.
    pub fn lease_until(&self) -> SystemTime {
        self.lease_until
    }

    /// The owner value the store keeps with the claim.
    pub fn owner(&self) -> &str {
        &self.token
    }

    /// The error for a token that no longer holds its claim in the store at
    /// `store_url`: [`Error::LeaseLost`].
    pub fn lost(&self, store_url: &str) -> Error {
        let url = store_url;
        Error::LeaseLost {
            url: url.to_owned(),
            scope: self.key.scope.clone(),
            key: self.key.key.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_part_by_part() {
        let ok = IdempotencyKey::new("g", "k");
        ok.check("memory://").expect("valid");
        for (key, needle) in [
            (IdempotencyKey::new("", "k"), "scope is empty"),
            (IdempotencyKey::new("g", ""), "key is empty"),
            (IdempotencyKey::new("g", "k".repeat(513)), "513 bytes"),
            (IdempotencyKey::new("g".repeat(250), "k"), "250 bytes"),
            (IdempotencyKey::new("g", "a\0b"), "NUL"),
        ] {
            let err = key.check("redis://u:***@h").unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
            assert!(err.to_string().contains("redis://u:***@h"), "{err}");
        }
        IdempotencyKey::new("g".repeat(249), "k".repeat(512))
            .check("memory://")
            .expect("longest allowed");
    }

    #[test]
    fn durations_are_whole_milliseconds_within_bounds() {
        assert_eq!(
            check_duration("m://", "lease", Duration::from_millis(1500)).unwrap(),
            1500
        );
        assert!(check_duration("m://", "lease", Duration::ZERO).is_err());
        assert!(check_duration("m://", "lease", Duration::from_micros(999)).is_err());
        assert!(check_duration("m://", "retention", MAX_DURATION * 2).is_err());
    }
}
