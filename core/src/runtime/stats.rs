//! Numbers a metrics layer can read while a consumer runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a consumer's counters and gauges; see [`ConsumerMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Deliveries received and not yet settled: running, waiting in a lane
    /// or for a concurrency slot, or waiting to be retried.
    pub in_flight: u64,
    /// Handler attempts running right now.
    pub running: u64,
    /// Ordering lanes: keys whose message is being handled and waits (for
    /// I/O, a retry, a slot), with the messages of the key queued behind it.
    pub lanes_active: u64,
    /// Messages handled successfully and acked.
    pub handled: u64,
    /// Failed attempts (each retry's failure counts).
    pub failed: u64,
    /// Retries scheduled after a transient failure.
    pub retried: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Messages given back unhandled (`Nack::Requeue`) at shutdown.
    pub requeued: u64,
    /// Acks and nacks the broker refused (the message then comes back).
    pub settle_errors: u64,
    /// Dead-letter copies the broker refused; each is published again
    /// after a backoff while the message is held (see
    /// [the module docs](crate::runtime#dead-letters)).
    pub dead_letter_failures: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Only one task ever changes the numbers (a consumer of concurrency
    /// 1 handles everything on its dispatch task): they are then changed
    /// by a plain load and store instead of a locked read-modify-write.
    /// Readers on other threads see each value whole either way.
    single_writer: bool,
    pub(crate) in_flight: AtomicU64,
    pub(crate) running: AtomicU64,
    pub(crate) lanes_active: AtomicU64,
    pub(crate) handled: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) requeued: AtomicU64,
    pub(crate) settle_errors: AtomicU64,
    pub(crate) dead_letter_failures: AtomicU64,
}

impl Counters {
    /// Counters changed by one task only; see `single_writer`.
    pub(crate) fn single_writer() -> Self {
        Counters {
            single_writer: true,
            ..Counters::default()
        }
    }

    #[inline]
    pub(crate) fn add(&self, counter: &AtomicU64) {
        if self.single_writer {
            counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        } else {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn sub(&self, counter: &AtomicU64) {
        if self.single_writer {
            counter.store(counter.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
        } else {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Sets the lane gauge; called with the lane table locked.
    pub(crate) fn set_lanes(&self, lanes: usize) {
        self.lanes_active.store(lanes as u64, Ordering::Relaxed);
    }
}

/// A live view of one consumer's numbers. Cheap to clone; read it from a
/// metrics exporter at any time, during and after the run.
#[derive(Debug, Clone, Default)]
pub struct ConsumerMetrics {
    pub(crate) counters: Arc<Counters>,
}

impl ConsumerMetrics {
    /// The numbers now. Each is read atomically; together they are a close,
    /// not a simultaneous, picture.
    pub fn snapshot(&self) -> ConsumerStats {
        let c = &self.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConsumerStats {
            in_flight: read(&c.in_flight),
            running: read(&c.running),
            lanes_active: read(&c.lanes_active),
            handled: read(&c.handled),
            failed: read(&c.failed),
            retried: read(&c.retried),
            dead_lettered: read(&c.dead_lettered),
            requeued: read(&c.requeued),
            settle_errors: read(&c.settle_errors),
            dead_letter_failures: read(&c.dead_letter_failures),
        }
    }
}
