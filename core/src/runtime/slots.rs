//! The consumer's concurrency slots: how many handler attempts may run at
//! once.
//!
//! A counter rather than a semaphore: taking and giving back a slot are one
//! atomic operation each, with no lock and no reference count, since a
//! busy consumer does both for every message. Only a task that finds no
//! slot free waits, on a [`Notify`]; a slot given back wakes one waiter,
//! and only when there is one.
//!
//! Waiters go first: while anyone waits, [`Slots::try_take`] finds no slot,
//! so a freed slot goes to the waiters (a retry waiting for its slot is
//! not overtaken by new messages forever).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The slots of one consumer.
#[derive(Debug)]
pub(crate) struct Slots {
    free: AtomicUsize,
    /// Tasks waiting in [`Slots::take`].
    waiting: AtomicUsize,
    freed: Notify,
}

/// A slot taken and not yet given back. It does not give itself back:
/// [`Slots::hold`] turns it into a [`Held`] slot, which does on drop.
#[derive(Debug)]
#[must_use = "a slot is given back through Slots::hold"]
pub(crate) struct Slot(());

/// A slot that is given back when dropped.
#[derive(Debug)]
pub(crate) struct Held<'a> {
    slots: &'a Slots,
}

impl Slots {
    /// `limit` slots, all free.
    pub(crate) fn new(limit: usize) -> Self {
        Slots {
            free: AtomicUsize::new(limit),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// A slot if one is free and nobody waits for one.
    #[inline]
    pub(crate) fn try_take(&self) -> Option<Slot> {
        if self.waiting.load(Ordering::SeqCst) != 0 {
            return None;
        }
        self.take_free()
    }

    fn take_free(&self) -> Option<Slot> {
        let mut free = self.free.load(Ordering::SeqCst);
        while free != 0 {
            match self.free.compare_exchange_weak(
                free,
                free - 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(Slot(())),
                Err(now) => free = now,
            }
        }
        None
    }

    /// A slot, waiting until one is free.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped before it returns, it took no slot (a wake-up it
    /// was sent passes to the next waiter).
    pub(crate) async fn take(&self) -> Slot {
        if let Some(slot) = self.try_take() {
            return slot;
        }
        let _waiting = Waiting::register(&self.waiting);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a slot given back after the
            // look wakes this waiter.
            freed.as_mut().enable();
            if let Some(slot) = self.take_free() {
                return slot;
            }
            freed.await;
        }
    }

    /// Holds `slot` until the returned guard is dropped.
    #[inline]
    pub(crate) fn hold(&self, slot: Slot) -> Held<'_> {
        let Slot(()) = slot;
        Held { slots: self }
    }

    fn give_back(&self) {
        self.free.fetch_add(1, Ordering::SeqCst);
        // Either the waiter's look after registering sees the slot, or this
        // load sees the waiter (both sequentially consistent).
        if self.waiting.load(Ordering::SeqCst) != 0 {
            self.freed.notify_one();
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.slots.give_back();
    }
}

/// Counts a waiter while it exists.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn register(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn slots_run_out_and_come_back() {
        let slots = Slots::new(2);
        let a = slots.try_take().expect("first");
        let b = slots.try_take().expect("second");
        assert!(slots.try_take().is_none());
        let held = slots.hold(a);
        drop(held);
        let c = slots.try_take().expect("given back");
        drop((slots.hold(b), slots.hold(c)));
        assert_eq!(slots.free.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_next_slot_before_new_takers() {
        let slots = Arc::new(Slots::new(1));
        let only = slots.try_take().expect("free");
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move {
                let slot = slots.take().await;
                drop(slots.hold(slot));
            }
        });
        while slots.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Someone waits: a new taker finds nothing, even with a slot free.
        drop(slots.hold(only));
        assert!(slots.try_take().is_none());
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiter got the slot")
            .expect("waiter");
        assert_eq!(slots.waiting.load(Ordering::SeqCst), 0);
        assert!(slots.try_take().is_some());
    }

    #[tokio::test]
    async fn a_cancelled_waiter_passes_its_wake_up_on() {
        let slots = Arc::new(Slots::new(1));
        let only = slots.try_take().expect("free");
        let first = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take().await }
        });
        let second = tokio::spawn({
            let slots = slots.clone();
            async move { drop(slots.hold(slots.take().await)) }
        });
        while slots.waiting.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        first.abort();
        let _ = first.await;
        drop(slots.hold(only));
        tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("the second waiter got the slot")
            .expect("second");
        assert_eq!(slots.free.load(Ordering::SeqCst), 1);
    }
}
