//! What the relay needs from a backend, and what operators read from one.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::row::Row;

/// How many pending rows wait, and for how long the oldest has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Rows enqueued and committed but not yet published.
    pub pending: u64,
    /// Time since the oldest pending row was enqueued (zero when none is).
    pub oldest_pending_age: Duration,
}

/// What became of the rows of one claim.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Confirmed by the broker.
    pub(crate) sent: Vec<i64>,
    /// Refused for good, with the reason.
    pub(crate) failed: Vec<(i64, String)>,
    /// Not published (a retryable failure); they stay pending.
    pub(crate) unsent: Vec<i64>,
    /// The retryable failure, as text, when there was one.
    pub(crate) error: Option<String>,
}

/// Rows claimed for publishing. For PostgreSQL the claim holds the rows'
/// locks until it is finished or dropped (dropped: rolled back, the rows
/// stay pending).
#[async_trait::async_trait]
pub(crate) trait Claim: Send {
    /// The rows to publish, in enqueue order.
    fn rows(&self) -> &[Row];

    /// Rows that could not be read back as messages, with the reason: the
    /// relay marks them failed.
    fn corrupt(&self) -> &[(i64, String)];

    /// Records the outcome: sent rows marked sent (or deleted), failed ones
    /// marked failed, unsent ones given their error, all at once.
    async fn finish(self: Box<Self>, outcome: &Outcome, delete_sent: bool) -> Result<()>;
}

/// A backend the relay works on.
#[async_trait::async_trait]
pub(crate) trait Store: Send + Sync + fmt::Debug + 'static {
    /// Claims up to `limit` pending rows that may be published now without
    /// breaking per-key order.
    async fn claim(&self, limit: usize) -> Result<Box<dyn Claim>>;

    /// The backlog gauge.
    async fn backlog(&self) -> Result<Backlog>;

    /// Deletes up to `limit` rows sent more than `retention` ago; returns
    /// how many it deleted.
    async fn delete_sent(&self, retention: Duration, limit: usize) -> Result<u64>;

    /// Starts a task that wakes `wake` when rows are committed
    /// (PostgreSQL's LISTEN) until `stop` is cancelled; `None` where the
    /// backend can only be polled.
    fn listen(&self, wake: Arc<Notify>, stop: CancellationToken) -> Option<JoinHandle<()>>;
}
