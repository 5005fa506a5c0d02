//! The relay's counters and gauges.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::Backlog;

/// What a relay has done, and the backlog it last saw.
///
/// Counters count since the relay started; `pending` and
/// `oldest_pending_age` are the gauge refreshed every
/// [`RelayConfig::backlog_interval`](crate::RelayConfig::backlog_interval).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Rows published and confirmed by the broker.
    pub published: u64,
    /// Rows marked failed (refused by the broker for good, or unreadable).
    pub failed: u64,
    /// Rounds that failed and were retried after a backoff (broker or
    /// database unavailable).
    pub retries: u64,
    /// Sent rows deleted by cleanup.
    pub cleaned: u64,
    /// Pending rows at the last refresh.
    pub pending: u64,
    /// Age of the oldest pending row at the last refresh.
    pub oldest_pending_age: Duration,
}

/// The shared, lock-free counters behind [`RelayStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) cleaned: AtomicU64,
    pending: AtomicU64,
    oldest_pending_age_ms: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_backlog(&self, backlog: Backlog) {
        self.pending.store(backlog.pending, Ordering::Relaxed);
        self.oldest_pending_age_ms.store(
            u64::try_from(backlog.oldest_pending_age.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn snapshot(&self) -> RelayStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayStats {
            published: load(&self.published),
            failed: load(&self.failed),
            retries: load(&self.retries),
            cleaned: load(&self.cleaned),
            pending: load(&self.pending),
            oldest_pending_age: Duration::from_millis(load(&self.oldest_pending_age_ms)),
        }
    }
}
