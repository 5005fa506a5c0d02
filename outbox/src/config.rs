//! How the relay works: batch size, poll interval, backoff, cleanup.

use std::time::Duration;

/// Settings of a [`Relay`](crate::Relay).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_outbox::RelayConfig;
///
/// let config = RelayConfig::default()
///     .batch_size(1000)
///     .poll_interval(Duration::from_secs(2))
///     .sent_retention(Duration::from_secs(24 * 3600));
/// assert_eq!(config.batch_size_value(), 1000);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    pub(crate) batch_size: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) listen: bool,
    pub(crate) publish_timeout: Duration,
    pub(crate) min_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) delete_sent: bool,
    pub(crate) sent_retention: Duration,
    pub(crate) cleanup_interval: Duration,
    pub(crate) cleanup_batch: usize,
    pub(crate) backlog_interval: Duration,
    pub(crate) shutdown_timeout: Duration,
}

impl Default for RelayConfig {
    /// Batches of 500 rows; poll every second (PostgreSQL is also woken by
    /// NOTIFY); give a broker 30 s to confirm a batch; back off from 100 ms
    /// to 30 s; keep sent rows for an hour, cleaned every minute in batches
    /// of 1,000; refresh the backlog gauge every 5 s; let a shutdown finish
    /// the current batch for up to 30 s.
    fn default() -> Self {
        RelayConfig {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            listen: true,
            publish_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            delete_sent: false,
            sent_retention: Duration::from_secs(3600),
            cleanup_interval: Duration::from_secs(60),
            cleanup_batch: 1000,
            backlog_interval: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl RelayConfig {
    /// Most rows claimed and published in one round (0 counts as 1).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// How long an idle relay waits before it looks for rows again. On
    /// PostgreSQL a commit usually wakes it sooner (see [`RelayConfig::listen`]);
    /// on SQLite this is the only way it learns of new rows.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Whether the PostgreSQL relay LISTENs for the NOTIFY that
    /// [`enqueue`](crate::postgres::PostgresOutbox::enqueue) sends at
    /// commit (on by default). Off: polling only. No effect on SQLite.
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }

    /// Longest wait for the broker to confirm one round's messages; past
    /// it the round counts as a retryable failure and its rows stay pending.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// First delay after a failed round (broker or database down); it
    /// doubles, with jitter, up to [`RelayConfig::max_backoff`], and falls
    /// back to this after a round succeeds.
    pub fn min_backoff(mut self, delay: Duration) -> Self {
        self.min_backoff = delay;
        self
    }

    /// Longest delay between failed rounds (before jitter).
    pub fn max_backoff(mut self, delay: Duration) -> Self {
        self.max_backoff = delay;
        self
    }

    /// Delete rows once published instead of marking them sent (off by
    /// default: sent rows are kept for [`RelayConfig::sent_retention`], for
    /// audits and debugging).
    pub fn delete_sent(mut self, on: bool) -> Self {
        self.delete_sent = on;
        self
    }

    /// How long sent rows are kept before cleanup deletes them.
    pub fn sent_retention(mut self, retention: Duration) -> Self {
        self.sent_retention = retention;
        self
    }

    /// How often cleanup runs.
    pub fn cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = interval;
        self
    }

    /// Most rows one cleanup statement deletes (0 counts as 1); a cleanup
    /// runs statements until one deletes fewer, so no statement holds locks
    /// on a large part of the table.
    pub fn cleanup_batch(mut self, rows: usize) -> Self {
        self.cleanup_batch = rows.max(1);
        self
    }

    /// How often the relay refreshes the backlog in its
    /// [`RelayStats`](crate::RelayStats).
    pub fn backlog_interval(mut self, interval: Duration) -> Self {
        self.backlog_interval = interval;
        self
    }

    /// How long a shutdown lets the current round finish. Past it the
    /// round is abandoned: its rows stay pending and are published again
    /// later (a duplicate if the broker had them already), never lost.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The batch size.
    pub fn batch_size_value(&self) -> usize {
        self.batch_size
    }
}
