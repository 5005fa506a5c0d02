//! Waiting on a client future only while its channel lives: a lapin future
//! whose frames were still queued when the connection died may never finish.

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

/// How often [`unless_dead`] looks at the channel.
const DEATH_WATCH: Duration = Duration::from_millis(100);

/// Awaits `future`, or gives up (`None`) once `alive` says its channel is
/// gone: a client future whose frames were still queued when the
/// connection died may never finish.
pub(crate) async fn unless_dead<T>(
    future: impl Future<Output = T>,
    alive: impl Fn() -> bool,
) -> Option<T> {
    Watch::new().wait(future, alive).await
}

/// A reusable [`unless_dead`]: one timer for many awaits (a batch of
/// publishes), and how long since one of them last finished.
pub(crate) struct Watch {
    ticks: tokio::time::Interval,
    progress: Instant,
}

impl Watch {
    pub(crate) fn new() -> Self {
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + DEATH_WATCH, DEATH_WATCH);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Watch {
            ticks,
            progress: Instant::now(),
        }
    }

    /// Awaits `future` unless `alive` turns false first (`None`).
    pub(crate) async fn wait<T>(
        &mut self,
        future: impl Future<Output = T>,
        alive: impl Fn() -> bool,
    ) -> Option<T> {
        self.wait_until(future, |_| !alive()).await
    }

    /// Awaits `future` unless `give_up` turns true first (`None`); checked
    /// every 100 ms with the time since the last await of this watch
    /// finished (or the watch began).
    pub(crate) async fn wait_until<T>(
        &mut self,
        future: impl Future<Output = T>,
        give_up: impl Fn(Duration) -> bool,
    ) -> Option<T> {
        let mut future = pin!(future);
        loop {
            tokio::select! {
                biased;
                out = &mut future => {
                    self.progress = Instant::now();
                    return Some(out);
                }
                _ = self.ticks.tick() => {
                    if give_up(self.progress.elapsed()) {
                        return None;
                    }
                }
            }
        }
    }
}
