//! The background task that deletes expired rows.

use std::future::Future;
use std::time::Duration;

use crate::error::Result;

/// The background task that deletes expired rows; stopped when dropped.
#[derive(Debug)]
pub(crate) struct Cleaner(tokio::task::JoinHandle<()>);

impl Cleaner {
    /// Runs `purge` every `interval`, logging failures, until dropped.
    pub(crate) fn spawn<F, Fut>(url: String, interval: Duration, purge: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64>> + Send,
    {
        Cleaner(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                match purge().await {
                    Ok(0) => {}
                    Ok(rows) => {
                        tracing::debug!(store = %url, rows, "deleted expired idempotency rows")
                    }
                    Err(error) => {
                        tracing::warn!(store = %url, %error, "deleting expired idempotency rows failed");
                    }
                }
            }
        }))
    }
}

impl Drop for Cleaner {
    fn drop(&mut self) {
        self.0.abort();
    }
}
