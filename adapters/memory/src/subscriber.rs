//! Streams of deliveries from the in-process broker.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use courier_core::{Delivery, Result};
use futures::Stream;
use futures::task::AtomicWaker;

use crate::Handle;
use crate::delivery::{Flow, MemoryAcker};
use crate::state::{Group, Pending, State};

/// How many messages a stream takes from its group's queue per lock.
const TAKE_PER_LOCK: usize = 256;

/// One subscription's stream. Messages it took from the group but has not
/// yet handed out go back to the head of the group's queue when it is dropped.
#[derive(Debug)]
pub(crate) struct MemoryStream {
    handle: Arc<Handle>,
    flow: Arc<Flow>,
    taken: VecDeque<Pending>,
}

impl MemoryStream {
    pub(crate) fn new(
        state: Arc<State>,
        handle: Arc<Handle>,
        group: Arc<Group>,
        prefetch: usize,
    ) -> Self {
        MemoryStream {
            handle,
            flow: Arc::new(Flow {
                state,
                group,
                in_flight: AtomicUsize::new(0),
                prefetch,
                waker: AtomicWaker::new(),
            }),
            taken: VecDeque::new(),
        }
    }

    fn capacity(&self) -> usize {
        self.flow
            .prefetch
            .saturating_sub(self.flow.in_flight.load(Ordering::Acquire))
    }

    fn deliver(&mut self, mut pending: Pending) -> Delivery {
        pending.deliveries += 1;
        self.flow.in_flight.fetch_add(1, Ordering::AcqRel);
        let acker = MemoryAcker {
            flow: self.flow.clone(),
            deliveries: pending.deliveries,
        };
        courier_core::adapter::delivery(
            pending.message,
            self.flow.group.topic.clone(),
            Box::new(acker),
            Some(pending.deliveries),
        )
    }
}

impl Stream for MemoryStream {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.handle.is_closed() {
            return Poll::Ready(None);
        }
        let mut capacity = self.capacity();
        if capacity == 0 {
            self.flow.waker.register(cx.waker());
            // Closing wakes group waiters only, so wait there too.
            Group::register(&mut self.flow.group.queue.lock(), cx.waker());
            capacity = self.capacity();
            if capacity == 0 {
                return Poll::Pending;
            }
        }
        if self.taken.is_empty() {
            let this = &mut *self;
            let mut q = this.flow.group.queue.lock();
            let n = q.ready.len().min(capacity).min(TAKE_PER_LOCK);
            if n == 0 {
                Group::register(&mut q, cx.waker());
                drop(q);
                // Closed between the check above and the registration?
                return if this.handle.is_closed() {
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                };
            }
            this.taken.extend(q.ready.drain(..n));
            this.flow.group.taken(n);
        }
        let pending = self.taken.pop_front().expect("taken is not empty");
        Poll::Ready(Some(Ok(self.deliver(pending))))
    }
}

impl Drop for MemoryStream {
    fn drop(&mut self) {
        if !self.taken.is_empty() {
            self.flow.group.requeue_front(self.taken.drain(..));
        }
    }
}
