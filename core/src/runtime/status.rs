//! What a running consumer is doing, for health endpoints.

use std::fmt;
use std::sync::atomic::Ordering;

use super::shared::Shared;

/// Where a consumer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConsumerState {
    /// Taking and handling messages.
    Running,
    /// The shutdown began: nothing new is taken; in-flight messages finish.
    Stopping,
    /// Stopped: the shutdown completed or the stream ended and it drained.
    Stopped,
}

impl fmt::Display for ConsumerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConsumerState::Running => "running",
            ConsumerState::Stopping => "stopping",
            ConsumerState::Stopped => "stopped",
        })
    }
}

/// A running consumer's state and load; see
/// [`RunningConsumer::status`](super::RunningConsumer::status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStatus {
    /// Running, stopping or stopped.
    pub state: ConsumerState,
    /// Deliveries received and not yet settled.
    pub in_flight: u64,
    /// Handler attempts running now.
    pub running: u64,
    /// The group's lag as last read in the background, with
    /// [`ConsumerBuilder::report_lag`](super::ConsumerBuilder::report_lag);
    /// `None` without it or before the first read.
    pub lag: Option<u64>,
    /// Dead-letter copies the broker refused so far (each is published
    /// again after a backoff); a number that grows means the dead-letter
    /// topic refuses and messages wait for it.
    pub dead_letter_failures: u64,
}

impl ConsumerStatus {
    pub(crate) fn of(shared: &Shared, finished: bool) -> Self {
        let state = if finished {
            ConsumerState::Stopped
        } else if shared.stop.is_triggered() {
            ConsumerState::Stopping
        } else {
            ConsumerState::Running
        };
        let counters = &shared.counters;
        ConsumerStatus {
            state,
            in_flight: counters.in_flight.load(Ordering::Relaxed),
            running: counters.running.load(Ordering::Relaxed),
            lag: shared.telemetry.last_lag(),
            dead_letter_failures: counters.dead_letter_failures.load(Ordering::Relaxed),
        }
    }
}
