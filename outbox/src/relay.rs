//! The relay: publishes committed rows through a courier publisher.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use courier_core::Publisher;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::error::Result;
use crate::publish::publish_rows;
use crate::stats::{Counters, RelayStats};
use crate::store::{Outcome, Store};

/// Publishes the outbox's committed rows through any courier [`Publisher`],
/// waits for the broker's confirmation, then marks them sent (or deletes
/// them).
///
/// Made by `PostgresOutbox::relay` or `SqliteOutbox::relay`; run it with
/// [`Relay::start`] (a task with a handle) or [`Relay::run_until`].
/// See the [crate docs](crate) for the guarantees.
pub struct Relay {
    store: Arc<dyn Store>,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("store", &self.store)
            .field("publisher", &self.publisher)
            .field("config", &self.config)
            .finish()
    }
}

impl Relay {
    pub(crate) fn new(store: Arc<dyn Store>, publisher: Arc<dyn Publisher>) -> Self {
        Relay {
            store,
            publisher,
            config: RelayConfig::default(),
        }
    }

    /// Replaces the settings.
    pub fn config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts the relay as a tokio task and returns its handle.
    /// [`RelayHandle::shutdown`] stops it and returns its final stats;
    /// dropping the handle stops it too.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(self) -> RelayHandle {
        let stop = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(
            self.store,
            self.publisher,
            self.config,
            counters.clone(),
            stop.clone(),
        ));
        RelayHandle {
            stop,
            counters,
            task: Some(task),
        }
    }

    /// Runs the relay until `signal` completes, then shuts it down
    /// gracefully and returns its final stats.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> RelayStats {
        let handle = self.start();
        signal.await;
        handle.shutdown().await
    }
}

/// A running relay. Dropping it stops the relay (the current round is
/// finished in the background, within the shutdown timeout).
#[derive(Debug)]
pub struct RelayHandle {
    stop: CancellationToken,
    counters: Arc<Counters>,
    task: Option<JoinHandle<()>>,
}

impl RelayHandle {
    /// The stats so far.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Whether the relay's task has ended (only after a stop, or a panic).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops taking new rows, lets the current round finish (within
    /// [`RelayConfig::shutdown_timeout`]), and returns the final stats.
    ///
    /// # Panics
    ///
    /// When the relay's task panicked.
    pub async fn shutdown(mut self) -> RelayStats {
        self.stop.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
        self.counters.snapshot()
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The relay's loop: rounds while rows come in full batches, then a wait
/// for a wake-up, the poll interval or the stop.
async fn run(
    store: Arc<dyn Store>,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    let listener = if config.listen {
        store.listen(wake.clone(), stop.child_token())
    } else {
        None
    };
    let backoff_builder = ExponentialBuilder::default()
        .with_min_delay(config.min_backoff)
        .with_max_delay(config.max_backoff)
        .with_jitter()
        .without_max_times();
    let mut backoff = backoff_builder.build();
    let mut next_cleanup = later(config.cleanup_interval);
    let mut next_backlog = Instant::now();

    while !stop.is_cancelled() {
        if Instant::now() >= next_backlog {
            next_backlog = later(config.backlog_interval);
            match store.backlog().await {
                Ok(backlog) => counters.set_backlog(backlog),
                Err(e) => tracing::warn!(error = %e, "outbox: cannot read the backlog"),
            }
        }
        if Instant::now() >= next_cleanup {
            next_cleanup = later(config.cleanup_interval);
            cleanup(&*store, &config, &counters, &stop).await;
        }

        let round = round(&*store, &*publisher, &config, &counters);
        let result = tokio::select! {
            result = round => result,
            () = deadline_after(&stop, config.shutdown_timeout) => {
                tracing::warn!("outbox relay: shutdown timeout; the round's rows stay pending");
                break;
            }
        };
        match result {
            Ok(Round::Full) => {
                backoff = backoff_builder.build();
                continue;
            }
            Ok(Round::Drained) => backoff = backoff_builder.build(),
            Err(reason) => {
                Counters::add(&counters.retries, 1);
                let delay = backoff.next().unwrap_or(config.max_backoff);
                tracing::warn!(%reason, ?delay, "outbox relay: round failed, backing off");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => {}
                }
                continue;
            }
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(config.poll_interval) => {}
            () = stop.cancelled() => {}
        }
    }
    if let Some(listener) = listener {
        listener.abort();
    }
}

/// How a round went when it did not fail.
enum Round {
    /// It claimed a full batch: more rows may wait.
    Full,
    /// It claimed less than a full batch.
    Drained,
}

/// One claim, publish and finish. `Err` with the reason when the database
/// or the broker failed (the rows stay pending).
async fn round(
    store: &dyn Store,
    publisher: &dyn Publisher,
    config: &RelayConfig,
    counters: &Counters,
) -> Result<Round, String> {
    let claim = store
        .claim(config.batch_size)
        .await
        .map_err(|e| courier_core::error::chain(&e))?;
    let claimed = claim.rows().len() + claim.corrupt().len();
    if claimed == 0 {
        return Ok(Round::Drained);
    }
    let mut outcome = match tokio::time::timeout(
        config.publish_timeout,
        publish_rows(publisher, claim.rows()),
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(_) => Outcome {
            unsent: claim.rows().iter().map(|r| r.seq).collect(),
            error: Some(format!(
                "the broker did not confirm within {:?}",
                config.publish_timeout
            )),
            ..Outcome::default()
        },
    };
    outcome.failed.extend(claim.corrupt().iter().cloned());
    for (row, reason) in &outcome.failed {
        tracing::error!(row, %reason, "outbox relay: row refused for good, marked failed");
    }
    claim
        .finish(&outcome, config.delete_sent)
        .await
        .map_err(|e| courier_core::error::chain(&e))?;
    Counters::add(&counters.published, outcome.sent.len());
    Counters::add(&counters.failed, outcome.failed.len());
    match outcome.error {
        Some(reason) => Err(reason),
        None if claimed >= config.batch_size => Ok(Round::Full),
        None => Ok(Round::Drained),
    }
}

/// Deletes sent rows past their retention, batch by batch.
async fn cleanup(
    store: &dyn Store,
    config: &RelayConfig,
    counters: &Counters,
    stop: &CancellationToken,
) {
    while !stop.is_cancelled() {
        match store
            .delete_sent(config.sent_retention, config.cleanup_batch)
            .await
        {
            Ok(deleted) => {
                Counters::add(&counters.cleaned, deleted as usize);
                if (deleted as usize) < config.cleanup_batch {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox: cleanup failed; trying again at the next interval");
                return;
            }
        }
    }
}

/// Completes `timeout` after `stop` is cancelled.
async fn deadline_after(stop: &CancellationToken, timeout: Duration) {
    stop.cancelled().await;
    tokio::time::sleep(timeout).await;
}

/// When something `interval` from now is due; an endless interval is a
/// far deadline, not a panic.
fn later(interval: Duration) -> Instant {
    Instant::from_std(courier_core::resilience::deadline_after(
        std::time::Instant::now(),
        interval,
    ))
}
