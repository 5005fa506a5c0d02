//! The crate's error type.

use std::time::Duration;

use courier_core::{BoxError, ConnectErrorKind};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure of an idempotency store. Each names the store's URL with its
/// password removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key or its scope is empty, too long, or contains a NUL character.
    #[error("invalid idempotency key for store {url}: {reason}")]
    InvalidKey {
        /// The store URL, password removed.
        url: String,
        /// What is wrong with the key.
        reason: String,
    },
    /// A lease or retention is shorter than a millisecond or longer than
    /// [`MAX_DURATION`](crate::MAX_DURATION).
    #[error("invalid {what} of {duration:?} for store {url}: {reason}")]
    InvalidDuration {
        /// The store URL, password removed.
        url: String,
        /// `"lease"` or `"retention"`.
        what: &'static str,
        /// The duration given.
        duration: Duration,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The store URL is malformed or its scheme is unknown.
    #[error("invalid idempotency store URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, password removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL's scheme needs a Cargo feature of this crate that is not enabled.
    #[error("idempotency store URL {url} needs the `{feature}` feature, which is not enabled")]
    FeatureDisabled {
        /// The URL, password removed.
        url: String,
        /// The Cargo feature to enable.
        feature: &'static str,
    },
    /// Connecting to the store failed.
    #[error("cannot connect to idempotency store {url}: {kind}")]
    Connect {
        /// The URL, password removed.
        url: String,
        /// What kind of failure.
        kind: ConnectErrorKind,
        /// The client's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The token no longer holds the claim: its lease ended (and another
    /// worker may have claimed the key since), or it was released. The
    /// fence that keeps a worker that stalled past its lease from completing
    /// or releasing a newer owner's claim.
    #[error("claim on {scope}/{key} in store {url} is no longer held by this token")]
    LeaseLost {
        /// The store URL, password removed.
        url: String,
        /// The key's scope (the consumer group).
        scope: String,
        /// The key.
        key: String,
    },
    /// The memory store holds its maximum number of keys and every one of
    /// them is a live claim, so none can be evicted.
    #[error("idempotency store {url} is full: {max_keys} keys, all claimed")]
    Full {
        /// The store URL.
        url: String,
        /// The configured maximum.
        max_keys: usize,
    },
    /// Creating the store's table failed.
    #[error("cannot create the idempotency table in {url}")]
    Migrate {
        /// The store URL, password removed.
        url: String,
        /// The database's error.
        #[source]
        source: BoxError,
    },
    /// The store failed an operation.
    #[error("idempotency store {url}: {operation} failed")]
    Store {
        /// The store URL, password removed.
        url: String,
        /// What was being done (`"claim"`, `"complete"`, ...).
        operation: &'static str,
        /// Whether trying again may succeed (a lost connection, a lock
        /// timeout, a serialization failure).
        retryable: bool,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The store did not answer in time.
    #[error("idempotency store {url}: {operation} timed out after {after:?}")]
    Timeout {
        /// The store URL, password removed.
        url: String,
        /// What was being done.
        operation: &'static str,
        /// How long the store waited.
        after: Duration,
    },
}

impl Error {
    /// Whether the same operation may succeed if tried again: an unreachable
    /// store, a timeout, a full memory store or a transient database failure.
    /// Invalid input, bad credentials and a lost lease are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { kind, .. } => kind.is_retryable(),
            Error::Store { retryable, .. } => *retryable,
            Error::Timeout { .. } | Error::Full { .. } => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryability_follows_the_kind_of_failure() {
        let refused = Error::Connect {
            url: "redis://h".into(),
            kind: ConnectErrorKind::Refused,
            source: None,
        };
        let auth = Error::Connect {
            url: "redis://h".into(),
            kind: ConnectErrorKind::Authentication,
            source: None,
        };
        let lost = Error::LeaseLost {
            url: "memory://".into(),
            scope: "g".into(),
            key: "k".into(),
        };
        assert!(refused.is_retryable());
        assert!(!auth.is_retryable());
        assert!(!lost.is_retryable());
        assert_eq!(
            lost.to_string(),
            "claim on g/k in store memory:// is no longer held by this token"
        );
    }
}
