//! Flow control of one subscription, shared by its pull loop and its
//! deliveries.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Flow control of one subscription: deliveries handed out and not settled.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) in_flight: AtomicUsize,
    /// Wakes the pull loop when it may pull again: a delivery was settled,
    /// or the stream took the last pulled message it held.
    pub(crate) room: Notify,
}

impl Flow {
    pub(crate) fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.room.notify_one();
    }

    /// The stream holds no pulled message any more.
    pub(crate) fn drained(&self) {
        self.room.notify_one();
    }
}
