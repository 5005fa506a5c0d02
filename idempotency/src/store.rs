//! The store contract: a three-state claim, complete and release.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::key::{ClaimToken, IdempotencyKey};

/// The answer to [`IdempotencyStore::claim`].
#[derive(Debug)]
pub enum Claim {
    /// The key is yours until the lease ends: do the work, then
    /// [`complete`](IdempotencyStore::complete) (or
    /// [`release`](IdempotencyStore::release) if it failed).
    Claimed(ClaimToken),
    /// Another worker holds an unexpired lease on the key: it is doing the
    /// work right now. Try again later (not before `until` if you want to
    /// be sure the question is settled: by then the other worker has
    /// completed, released, or lost its lease).
    InProgress {
        /// When the other worker's lease ends, by the store's clock.
        until: SystemTime,
    },
    /// The work was done and completed within the retention: skip it.
    AlreadyDone {
        /// The result stored with
        /// [`complete_with_result`](IdempotencyStore::complete_with_result),
        /// if any: a responder answers a repeated request with the first
        /// answer.
        result: Option<Bytes>,
    },
}

impl Claim {
    /// Whether the key was claimed.
    pub fn is_claimed(&self) -> bool {
        matches!(self, Claim::Claimed(_))
    }

    /// Whether the work was already done.
    pub fn is_done(&self) -> bool {
        matches!(self, Claim::AlreadyDone { .. })
    }

    /// Whether another worker holds the key.
    pub fn is_in_progress(&self) -> bool {
        matches!(self, Claim::InProgress { .. })
    }
}

/// A deduplication store: turns at-least-once delivery into exactly-once
/// effects.
///
/// A worker *claims* a key before it does the work. Exactly one concurrent
/// claimer gets [`Claim::Claimed`] with a token and a lease; the others get
/// [`Claim::InProgress`] until the lease ends, and [`Claim::AlreadyDone`]
/// once the owner has *completed* the key (for as long as the retention
/// given then). An owner whose work failed *releases* the key, so a
/// redelivery can claim it again. A lease that ends without either (the
/// worker crashed, or took longer than its lease) frees the key: nothing is
/// blocked forever.
///
/// Every implementation behaves the same way; `tests/store.rs` holds each
/// to one suite. Another store checks its input with
/// [`IdempotencyKey::check`] and [`check_duration`](crate::check_duration),
/// makes tokens with [`ClaimToken::new`] (its own owner value, checked again
/// by complete and release) and reports a lost claim with
/// [`ClaimToken::lost`]. Object safe, so [`connect`](crate::connect) can return the
/// store chosen by URL as `Arc<dyn IdempotencyStore>`.
///
/// # Errors
///
/// Every method checks its input ([`Error::InvalidKey`],
/// [`Error::InvalidDuration`]) and reports store failures as
/// [`Error::Store`] or [`Error::Timeout`] (see
/// [`Error::is_retryable`]). `complete` and `release` fail with
/// [`Error::LeaseLost`] when the token no longer holds the claim.
///
/// # Cancel safety
///
/// A claim whose future is dropped may or may not have been made; if it was,
/// its lease frees the key when it ends. Dropping `complete` or `release`
/// leaves the claim either as it was or settled.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_idempotency::{Claim, IdempotencyKey};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier_idempotency::Result<()> {
/// let store = courier_idempotency::connect("memory://").await?;
/// let key = IdempotencyKey::new("billing", "order-42");
/// let Claim::Claimed(token) = store.claim(&key, Duration::from_secs(30)).await? else {
///     unreachable!("a fresh key is free");
/// };
/// // Someone else asks while the work runs:
/// assert!(store.claim(&key, Duration::from_secs(30)).await?.is_in_progress());
/// // ... do the work once, then:
/// store.complete(&token, Duration::from_secs(3600)).await?;
/// assert!(store.claim(&key, Duration::from_secs(30)).await?.is_done());
/// # Ok(()) }
/// ```
///
/// [`Error::InvalidKey`]: crate::Error::InvalidKey
/// [`Error::InvalidDuration`]: crate::Error::InvalidDuration
/// [`Error::Store`]: crate::Error::Store
/// [`Error::Timeout`]: crate::Error::Timeout
/// [`Error::is_retryable`]: crate::Error::is_retryable
/// [`Error::LeaseLost`]: crate::Error::LeaseLost
#[async_trait]
pub trait IdempotencyStore: Send + Sync + fmt::Debug {
    /// Claims `key` for `lease` (at least 1 ms): see [`Claim`] for the three
    /// answers. An expired claim or done mark counts as absent.
    ///
    /// # Errors
    ///
    /// See the [trait docs](IdempotencyStore).
    async fn claim(&self, key: &IdempotencyKey, lease: Duration) -> Result<Claim>;

    /// Marks the claimed key as done for `retention` (at least 1 ms) and
    /// stores `result` with it, returned to later claimers in
    /// [`Claim::AlreadyDone`]. Completing again with the same token
    /// succeeds (so a retry after a lost answer is safe) and replaces the
    /// retention and result.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) if the token's lease
    /// ended before it completed, or another worker claimed the key since;
    /// see also the [trait docs](IdempotencyStore).
    async fn complete_with_result(
        &self,
        token: &ClaimToken,
        retention: Duration,
        result: Option<Bytes>,
    ) -> Result<()>;

    /// Marks the claimed key as done for `retention`, without a result.
    ///
    /// # Errors
    ///
    /// As [`IdempotencyStore::complete_with_result`].
    async fn complete(&self, token: &ClaimToken, retention: Duration) -> Result<()> {
        self.complete_with_result(token, retention, None).await
    }

    /// Gives the claim up (the work failed): the key is free at once, so a
    /// redelivery can claim it.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) if the token no longer
    /// holds the claim (its lease ended, or it was completed or released);
    /// see also the [trait docs](IdempotencyStore).
    async fn release(&self, token: &ClaimToken) -> Result<()>;

    /// The store's URL, password removed: for logs and errors.
    fn url(&self) -> &str;
}

/// Wall-clock time `millis` milliseconds after the Unix epoch.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn system_time_from_millis(millis: i64) -> SystemTime {
    let millis = u64::try_from(millis).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_millis(millis)
}

/// Milliseconds since the Unix epoch, now.
#[cfg(feature = "sqlite")]
pub(crate) fn now_millis() -> i64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
