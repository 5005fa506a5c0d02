//! One assigned partition of a subscription: its watermark, whether it is
//! still owned, and how many of its deliveries are handed out.
//!
//! A partition object lives for one assignment. When the group takes the
//! partition away (or the subscription ends) it is revoked: its final
//! position is committed, and deliveries settled after that do not count,
//! because the next owner starts from that position.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::watermark::{Received, Watermark};

/// Where a partition is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Owned: deliveries are handed out and settled.
    Active,
    /// Being taken away: nothing more is handed out; deliveries already out
    /// may still be settled until the final commit.
    Revoking,
    /// Gone: the final position was taken for commit.
    Revoked,
}

/// Why a settlement did not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Revoked;

#[derive(Debug)]
struct State {
    watermark: Watermark,
    phase: Phase,
    /// Deliveries handed out and not yet settled or given back.
    handed_out: usize,
    /// Whether the position or metadata changed since the last commit.
    dirty: bool,
}

/// One partition of one assignment.
#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) topic: Arc<str>,
    pub(crate) id: i32,
    state: Mutex<State>,
    /// Signalled when the last handed-out delivery is settled.
    idle: Condvar,
}

impl Partition {
    /// A newly assigned partition whose previous owner settled `skip`
    /// above the committed position.
    pub(crate) fn new(topic: Arc<str>, id: i32, skip: BTreeSet<i64>) -> Arc<Self> {
        Arc::new(Partition {
            topic,
            id,
            state: Mutex::new(State {
                watermark: Watermark::new(skip),
                phase: Phase::Active,
                handed_out: 0,
                dirty: false,
            }),
            idle: Condvar::new(),
        })
    }

    /// Records a fetched offset; see [`Watermark::receive`].
    pub(crate) fn receive(&self, offset: i64) -> Received {
        let mut state = self.state.lock();
        let received = state.watermark.receive(offset);
        if received == Received::AlreadySettled {
            state.dirty = true;
        }
        received
    }

    /// Takes a delivery of this partition out to the application; `false`
    /// when the partition is no longer owned (the delivery is dropped: the
    /// next owner gets it).
    pub(crate) fn hand_out(&self, offset: i64) -> bool {
        let mut state = self.state.lock();
        if state.phase != Phase::Active || !state.watermark.is_unsettled(offset) {
            return false;
        }
        state.handed_out += 1;
        true
    }

    /// Settles a handed-out delivery: it is done.
    pub(crate) fn settle(&self, offset: i64) -> Result<(), Revoked> {
        let mut state = self.state.lock();
        self.put_back(&mut state);
        if state.phase == Phase::Revoked {
            return Err(Revoked);
        }
        state.watermark.settle(offset);
        state.dirty = true;
        Ok(())
    }

    /// Settles a handed-out delivery if the partition is still owned;
    /// otherwise changes nothing and returns `false` (then
    /// [`Partition::settle`] reports the revocation).
    pub(crate) fn settle_if_owned(&self, offset: i64) -> bool {
        let mut state = self.state.lock();
        if state.phase == Phase::Revoked {
            return false;
        }
        self.put_back(&mut state);
        state.watermark.settle(offset);
        state.dirty = true;
        true
    }

    /// Settles an offset that was never handed out (a record dead-lettered
    /// because courier cannot represent it).
    pub(crate) fn settle_unhanded(&self, offset: i64) -> Result<(), Revoked> {
        let mut state = self.state.lock();
        if state.phase == Phase::Revoked {
            return Err(Revoked);
        }
        state.watermark.settle(offset);
        state.dirty = true;
        Ok(())
    }

    /// Gives a handed-out delivery back unsettled. Returns whether this
    /// consumer should deliver it again (the partition is still owned).
    pub(crate) fn give_back(&self) -> bool {
        let mut state = self.state.lock();
        self.put_back(&mut state);
        state.phase == Phase::Active
    }

    /// Whether the partition is still owned (a delayed redelivery checks).
    pub(crate) fn is_active(&self) -> bool {
        self.state.lock().phase == Phase::Active
    }

    fn put_back(&self, state: &mut State) {
        state.handed_out = state.handed_out.saturating_sub(1);
        if state.handed_out == 0 {
            self.idle.notify_all();
        }
    }

    /// Stops handing out deliveries of this partition.
    pub(crate) fn start_revoking(&self) {
        let mut state = self.state.lock();
        if state.phase == Phase::Active {
            state.phase = Phase::Revoking;
        }
    }

    /// Waits until no delivery is handed out, `deadline` passes, or
    /// `give_up()` says to stop waiting (checked every 100 ms).
    pub(crate) fn wait_idle(&self, deadline: Instant, give_up: impl Fn() -> bool) {
        let mut state = self.state.lock();
        while state.handed_out > 0 && !give_up() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let step = (deadline - now).min(std::time::Duration::from_millis(100));
            self.idle.wait_for(&mut state, step);
        }
    }

    /// Ends the assignment: returns the final position and metadata to
    /// commit (`None` when nothing was fetched). Settlements after this do
    /// not count.
    pub(crate) fn revoke(&self) -> (Option<(i64, String)>, usize) {
        let mut state = self.state.lock();
        state.phase = Phase::Revoked;
        let commit = state
            .watermark
            .position()
            .map(|position| (position, state.watermark.metadata()));
        (commit, state.handed_out)
    }

    /// The position and metadata to commit if they changed since the last
    /// call (or always, with `force`).
    pub(crate) fn take_commit(&self, force: bool) -> Option<(i64, String)> {
        let mut state = self.state.lock();
        if !(state.dirty || force) || state.phase == Phase::Revoked {
            return None;
        }
        state.dirty = false;
        let position = state.watermark.position()?;
        Some((position, state.watermark.metadata()))
    }

    /// Marks the partition as needing a commit again (the last one failed).
    pub(crate) fn mark_dirty(&self) {
        self.state.lock().dirty = true;
    }

    /// How many fetched offsets are not settled.
    #[cfg(test)]
    pub(crate) fn unsettled(&self) -> usize {
        self.state.lock().watermark.unsettled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn revoked_partitions_refuse_settlements_and_hand_out_nothing() {
        let p = Partition::new(Arc::from("t"), 0, BTreeSet::new());
        p.receive(0);
        p.receive(1);
        assert!(p.hand_out(0));
        assert!(p.hand_out(1));
        p.settle(1).unwrap();
        p.start_revoking();
        assert!(!p.hand_out(0), "nothing is handed out while revoking");
        let (commit, out) = p.revoke();
        assert_eq!(commit, Some((0, "courier1:0:1".to_owned())));
        assert_eq!(out, 1);
        assert_eq!(p.settle(0), Err(Revoked));
        assert_eq!(p.unsettled(), 1, "a late ack does not move the position");
    }

    #[test]
    fn settling_at_once_changes_nothing_on_a_revoked_partition() {
        let p = Partition::new(Arc::from("t"), 0, BTreeSet::new());
        p.receive(0);
        p.receive(1);
        assert!(p.hand_out(0));
        assert!(p.hand_out(1));
        assert!(p.settle_if_owned(1));
        p.start_revoking();
        let (commit, out) = p.revoke();
        assert_eq!(commit, Some((0, "courier1:0:1".to_owned())));
        assert_eq!(out, 1);
        assert!(!p.settle_if_owned(0));
        assert_eq!(p.state.lock().handed_out, 1, "left for settle to report");
        assert_eq!(p.settle(0), Err(Revoked));
        assert_eq!(p.state.lock().handed_out, 0);
        assert_eq!(p.unsettled(), 1, "a late ack does not move the position");
    }

    #[test]
    fn a_settled_offset_is_not_handed_out_again() {
        let p = Partition::new(Arc::from("t"), 0, BTreeSet::new());
        p.receive(0);
        assert!(p.hand_out(0));
        p.settle(0).unwrap();
        assert!(!p.hand_out(0));
    }

    #[test]
    fn waiting_for_idle_ends_when_the_last_delivery_is_settled() {
        let p = Partition::new(Arc::from("t"), 0, BTreeSet::new());
        p.receive(0);
        assert!(p.hand_out(0));
        p.start_revoking();
        let settler = {
            let p = p.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                p.settle(0).unwrap();
            })
        };
        let started = Instant::now();
        p.wait_idle(started + Duration::from_secs(10), || false);
        assert!(started.elapsed() < Duration::from_secs(5));
        settler.join().unwrap();
        assert_eq!(p.revoke().0, Some((1, String::new())));
    }
}
