//! The partitions a subscription is assigned, as the poll thread looks
//! them up for every record it fetches.
//!
//! The map of assigned partitions is changed by the rebalance callbacks
//! and read by the commit and the poll loop. Looking a record's partition
//! up in it took its lock (and hashed the id) per record; the poll thread
//! keeps a copy instead ([`Lookup`]), taken again whenever the assignment
//! changed ([`Assignment::changes`] moved): a partition revoked is gone
//! from the copy before the next record is looked up, and a partition
//! assigned again is found as its new object, never the revoked one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};

use crate::partition::Partition;

/// The assigned partitions by id, and a count of the changes made to them.
#[derive(Debug, Default)]
pub(crate) struct Assignment {
    partitions: Mutex<HashMap<i32, Arc<Partition>>>,
    /// Moves (under the lock) with every change of `partitions`.
    changes: AtomicU64,
}

impl Assignment {
    /// The partitions, to read.
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<i32, Arc<Partition>>> {
        self.partitions.lock()
    }

    /// The partitions, to change: the change is counted, so every
    /// [`Lookup`] takes a new copy.
    pub(crate) fn change(&self) -> MutexGuard<'_, HashMap<i32, Arc<Partition>>> {
        let partitions = self.partitions.lock();
        self.changes.fetch_add(1, Ordering::AcqRel);
        partitions
    }

    /// How many changes were made so far.
    fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }
}

/// The poll thread's copy of the assignment, sorted by id.
#[derive(Debug, Default)]
pub(crate) struct Lookup {
    /// The change count the copy was taken at (`None` before the first).
    taken_at: Option<u64>,
    partitions: Vec<(i32, Arc<Partition>)>,
    /// Where the last partition found is: records come in runs of one
    /// partition.
    last: usize,
}

impl Lookup {
    /// The assigned partition `id`, if it is assigned now.
    pub(crate) fn get(&mut self, assignment: &Assignment, id: i32) -> Option<&Arc<Partition>> {
        let changes = assignment.changes();
        if self.taken_at != Some(changes) {
            let partitions = assignment.lock();
            // Read again under the lock: changes move under it too.
            self.taken_at = Some(assignment.changes());
            self.partitions = partitions.iter().map(|(&i, p)| (i, p.clone())).collect();
            self.partitions.sort_unstable_by_key(|&(i, _)| i);
            self.last = 0;
        }
        if self.partitions.get(self.last).is_none_or(|&(i, _)| i != id) {
            self.last = self
                .partitions
                .binary_search_by_key(&id, |&(i, _)| i)
                .ok()?;
        }
        self.partitions.get(self.last).map(|(_, p)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn partition(id: i32) -> Arc<Partition> {
        Partition::new(Arc::from("t"), id, BTreeSet::new())
    }

    #[test]
    fn a_revoked_partition_is_not_found_and_a_reassigned_one_is_the_new_object() {
        let assignment = Assignment::default();
        let first = partition(3);
        assignment.change().insert(3, first.clone());
        assignment.change().insert(1, partition(1));
        let mut lookup = Lookup::default();
        assert!(Arc::ptr_eq(lookup.get(&assignment, 3).unwrap(), &first));
        assert_eq!(lookup.get(&assignment, 1).unwrap().id, 1);
        assert!(lookup.get(&assignment, 2).is_none());

        assignment.change().remove(&3);
        assert!(lookup.get(&assignment, 3).is_none(), "revoked");
        let second = partition(3);
        assignment.change().insert(3, second.clone());
        let found = lookup.get(&assignment, 3).unwrap();
        assert!(Arc::ptr_eq(found, &second), "the new assignment's object");
    }
}
