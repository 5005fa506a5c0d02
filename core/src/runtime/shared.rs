//! What every task of a running consumer shares: the handler, the slots,
//! the ordering lanes, the shutdown triggers and the counters.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::lanes::{LaneIds, LaneTable};
use super::retry::RetryPolicy;
use super::slots::Slots;
use super::stats::Counters;
use crate::error::Result;
use crate::pubsub::DeliveryStream;
use crate::telemetry::{ConsumerTelemetry, LagReport};

/// A consumer's handler with what its tasks share. Generic over the
/// handler's type, so that the runtime calls a handler without layers
/// through
/// [`Handler::call_unboxed`](super::handler::Handler::call_unboxed)
/// and holds its future inline; a consumer keeps it as a [`Run`].
pub(crate) struct Running<H> {
    pub(crate) shared: Shared,
    pub(crate) handler: H,
}

impl<H> Deref for Running<H> {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// A [`Running`] consumer with its handler's type erased.
pub(crate) trait Run: Send + Sync + 'static {
    fn shared(&self) -> &Shared;

    /// The consumer's main loop (implemented in `dispatch`).
    fn dispatch(
        self: Arc<Self>,
        stream: DeliveryStream,
        deadline: Duration,
    ) -> BoxFuture<'static, Result<()>>;
}

impl Deref for dyn Run {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        self.shared()
    }
}

/// What every task of a running consumer shares but the handler.
pub(crate) struct Shared {
    pub(crate) topic: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) retry: RetryPolicy,
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) ordered_by_key: bool,
    /// Concurrency 1: the dispatcher handles each delivery itself.
    pub(crate) serial: bool,
    /// One permit per handler attempt allowed to run.
    pub(crate) slots: Slots,
    /// Per key: the deliveries waiting behind the one being handled.
    pub(crate) lanes: Mutex<LaneTable>,
    /// Which lane a key belongs to.
    pub(crate) lane_ids: LaneIds,
    /// Phase 1 of the shutdown: take nothing more.
    pub(crate) stop: Stop,
    /// Phase 2's deadline passed: cancel what runs.
    pub(crate) abort: CancellationToken,
    pub(crate) counters: Arc<Counters>,
    /// Spans and metrics.
    pub(crate) telemetry: ConsumerTelemetry,
    /// Whether and how the group's lag is read in the background.
    pub(crate) lag_report: Option<LagReport>,
}

/// The trigger of phase 1, for this consumer: its handle's (which may be
/// shared) or its own (the stream ended, `Consumer::run_until`).
pub(crate) struct Stop {
    handle: Arc<AtomicBool>,
    own: AtomicBool,
    /// A child of the handle's token, cancelled with either flag.
    pub(crate) token: CancellationToken,
}

impl Stop {
    /// A trigger raised by `handle` (the shutdown handle's flag, maybe
    /// shared with other consumers) or by [`Stop::trigger`]; `token` is
    /// cancelled with either.
    pub(crate) fn new(handle: Arc<AtomicBool>, token: CancellationToken) -> Self {
        Stop {
            handle,
            own: AtomicBool::new(false),
            token,
        }
    }

    /// Whether phase 1 began. Cheap: two atomic loads.
    #[inline]
    pub(crate) fn is_triggered(&self) -> bool {
        self.own.load(Ordering::Acquire) || self.handle.load(Ordering::Acquire)
    }

    /// Begins phase 1 for this consumer only.
    pub(crate) fn trigger(&self) {
        self.own.store(true, Ordering::Release);
        self.token.cancel();
    }
}

impl Shared {
    pub(crate) fn lock_lanes(&self) -> MutexGuard<'_, LaneTable> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
