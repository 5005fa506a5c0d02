//! Reading a group's lag within a bound, and a running consumer's
//! background reporter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::lag::Lag;
use crate::error::Result;
use crate::pubsub::Subscriber;

/// [`Subscriber::lag`] bounded by `timeout`.
///
/// # Errors
///
/// [`Error::Timeout`](crate::Error::Timeout) (operation `"lag"`) when the broker did not answer
/// within `timeout`; otherwise what the adapter reports.
///
/// # Cancel safety
///
/// Cancel safe: asking for lag changes nothing.
pub async fn lag_within(
    subscriber: &dyn Subscriber,
    topic: &str,
    group: &str,
    timeout: Duration,
) -> Result<Lag> {
    crate::error::within("lag", timeout, subscriber.lag(topic, group)).await
}

/// How a running consumer refreshes its group's lag in the background; see
/// [`ConsumerBuilder::report_lag`](crate::runtime::ConsumerBuilder::report_lag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LagReport {
    pub(crate) every: Duration,
    pub(crate) timeout: Duration,
}

/// The last lag a consumer's reporter read; `u64::MAX` for none yet.
#[derive(Debug)]
pub(crate) struct LastLag(AtomicU64);

impl Default for LastLag {
    fn default() -> Self {
        LastLag(AtomicU64::new(u64::MAX))
    }
}

impl LastLag {
    pub(crate) fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&lag| lag != u64::MAX)
    }
}

/// Reads the lag every `report.every` until `stop`, into the consumer's
/// gauge and `last`. A read that fails or times out is logged and leaves
/// both as they were, so a scrape never waits on the broker.
pub(crate) fn spawn_reporter(
    subscriber: Arc<dyn Subscriber>,
    topic: String,
    group: String,
    report: LagReport,
    gauge: ::metrics::Gauge,
    last: Arc<LastLag>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let read = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                read = lag_within(&*subscriber, &topic, &group, report.timeout) => read,
            };
            match read {
                Ok(lag) => {
                    gauge.set(lag.total as f64);
                    last.0.store(lag.total.min(u64::MAX - 1), Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::debug!(%topic, %group, %error, "reading the consumer lag failed");
                }
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep(report.every) => {}
            }
        }
    });
}
