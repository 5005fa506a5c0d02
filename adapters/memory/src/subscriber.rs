//! Streams of deliveries from the in-process broker.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use courier_core::{Delivery, Result};
use futures::Stream;
use futures::task::AtomicWaker;

use crate::delivery::{Flow, MemoryAcker};
use crate::state::{Group, Handle, Pending, State};

/// Most messages a stream takes from its group's queue per lock.
const TAKE_PER_LOCK: usize = 256;

/// How many of `ready` messages a member holding `mine` may take when the
/// group's `members` hold `held` in all: up to its share of everything the
/// group has (ready and held). A member alone takes everything; of two,
/// the first to come takes half of a backlog and leaves the other half to
/// the other. A member takes more by settling (its share grows as the
/// group's messages are handled), so while the others are busy it handles
/// their part too, but it never takes a backlog they are waiting for.
fn fair_take(ready: usize, held: usize, mine: usize, members: usize) -> usize {
    (ready + held)
        .div_ceil(members.max(1))
        .saturating_sub(mine)
        .min(ready)
}

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
        group.members.fetch_add(1, Ordering::AcqRel);
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
            let group = &this.flow.group;
            let n = fair_take(
                q.ready.len(),
                group.held.load(Ordering::Acquire),
                this.flow.in_flight.load(Ordering::Acquire),
                group.members.load(Ordering::Acquire),
            )
            .min(capacity)
            .min(TAKE_PER_LOCK);
            if n == 0 {
                if !q.ready.is_empty() {
                    // Messages wait, but this member holds its share: wait
                    // for settlements.
                    group.starved.store(true, Ordering::Release);
                }
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
        self.flow.group.members.fetch_sub(1, Ordering::AcqRel);
        if !self.taken.is_empty() {
            self.flow.group.requeue_front(self.taken.drain(..));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fair_take;

    #[test]
    fn a_member_takes_its_share_of_everything_the_group_has() {
        // Alone: everything.
        assert_eq!(fair_take(300, 0, 0, 1), 300);
        // First of two to a backlog: half; then nothing until it settles.
        assert_eq!(fair_take(300, 0, 0, 2), 150);
        assert_eq!(fair_take(150, 150, 150, 2), 0);
        // The second: the other half.
        assert_eq!(fair_take(150, 150, 0, 2), 150);
        // The other member holds 100 and is busy: this one takes the rest
        // as it settles.
        assert_eq!(fair_take(200, 100, 0, 2), 150);
        assert_eq!(fair_take(50, 100, 0, 2), 50);
        // Never more than is ready, at least one of one message.
        assert_eq!(fair_take(1, 0, 0, 3), 1);
        assert_eq!(fair_take(0, 5, 0, 3), 0);
    }
}
