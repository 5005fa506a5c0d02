//! Flow control of one subscription, shared by its pull loop and its
//! deliveries.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Flow control of one subscription: deliveries handed out and not settled.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) in_flight: AtomicUsize,
    pub(crate) settled: Notify,
}

impl Flow {
    pub(crate) fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.settled.notify_one();
    }
}
