//! What one subscription's stream, poll thread and deliveries share: the
//! records on their way, the prefetch count, and the signals between them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use courier_core::adapter::TaskSet;
use courier_core::{Error, Message};
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::partition::Partition;
use crate::publisher::Producer;

/// A fetched record on its way to the application.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) partition: Arc<Partition>,
    pub(crate) offset: i64,
    pub(crate) message: Message,
    /// Deliveries so far in this session (0 before the first).
    pub(crate) deliveries: u32,
}

/// What the poll thread sends the stream.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// Records to hand out, in the order fetched.
    Records(Vec<Pending>),
    /// The consumer failed for good; the stream ends after this.
    Failed(Error),
}

/// What one subscription's stream, poll thread and deliveries share.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) topic: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) producer: Arc<Producer>,
    pub(crate) prefetch: usize,
    /// Deliveries handed out and not yet settled or given back.
    pub(crate) in_flight: AtomicUsize,
    /// Records fetched and sent to the stream but not yet taken by it.
    pub(crate) buffered: AtomicUsize,
    /// Deliveries given back (nack, drop), delivered before new records.
    pub(crate) redeliver: Mutex<VecDeque<Pending>>,
    pub(crate) waker: AtomicWaker,
    /// The subscription is ending (closed, or its stream dropped).
    pub(crate) ending: AtomicBool,
    /// The connection is closing: the subscription ends without waiting
    /// for its deliveries to be settled.
    pub(crate) closing: AtomicBool,
    /// The poll thread, woken when the stream takes records.
    pub(crate) poller: Mutex<Option<std::thread::Thread>>,
    /// Becomes `true` when the poll thread has committed and left the group.
    pub(crate) finished: watch::Sender<bool>,
    /// Detached work of the subscription (delayed redeliveries, dead-letter
    /// copies of undecodable records), which closing waits for.
    pub(crate) tasks: TaskSet,
}

impl Flow {
    pub(crate) fn new(
        topic: &str,
        group: &str,
        producer: Arc<Producer>,
        prefetch: usize,
    ) -> (Arc<Self>, watch::Receiver<bool>) {
        let (finished, done) = watch::channel(false);
        let flow = Flow {
            topic: Arc::from(topic),
            group: Arc::from(group),
            producer,
            prefetch,
            in_flight: AtomicUsize::new(0),
            buffered: AtomicUsize::new(0),
            redeliver: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            ending: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            poller: Mutex::new(None),
            finished,
            tasks: TaskSet::new(),
        };
        (Arc::new(flow), done)
    }

    /// At most this many records wait in the stream's buffer before the
    /// poll thread stops fetching.
    pub(crate) fn high_water(&self) -> usize {
        (self.prefetch * 2).max(64)
    }

    /// The poll thread fetches again once the buffer is down to this.
    pub(crate) fn low_water(&self) -> usize {
        self.high_water() / 2
    }

    pub(crate) fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Acquire)
    }

    /// Counts `records` about to be sent to the stream.
    pub(crate) fn add_buffered(&self, records: usize) {
        self.buffered.fetch_add(records, Ordering::AcqRel);
    }

    pub(crate) fn take_buffered(&self) {
        let before = self.buffered.fetch_sub(1, Ordering::AcqRel);
        if before == self.low_water() + 1 {
            self.wake_poller();
        }
    }

    pub(crate) fn set_poller(&self, thread: std::thread::Thread) {
        *self.poller.lock() = Some(thread);
    }

    pub(crate) fn wake_poller(&self) {
        if let Some(thread) = &*self.poller.lock() {
            thread.unpark();
        }
    }

    pub(crate) fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    /// Whether the connection is closing (see [`Running::stop`]).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Ends the subscription: the stream ends, the poll thread commits and
    /// leaves the group.
    pub(crate) fn end(&self) {
        if !self.ending.swap(true, Ordering::AcqRel) {
            self.waker.wake();
            self.wake_poller();
        }
    }

    /// Called by the poll thread when it is done.
    pub(crate) fn set_finished(&self) {
        self.finished.send_replace(true);
        self.waker.wake();
    }

    /// A settled or given-back delivery frees a prefetch slot.
    pub(crate) fn release(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == self.prefetch {
            self.waker.wake();
        }
    }

    /// Queues a given-back delivery to come next.
    pub(crate) fn redeliver_front(&self, pending: Pending) {
        self.redeliver.lock().push_front(pending);
        self.waker.wake();
    }

    /// Counts a delivery handed out.
    pub(crate) fn add_in_flight(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }
}
