//! The ordering lanes' table: per key, the deliveries queued behind the
//! one being handled.
//!
//! A lane is found by a 64-bit hash of its key rather than the key itself,
//! so dispatching a keyed message copies no key and allocates nothing
//! unless its lane has to wait. Two keys whose hashes collide share a
//! lane: their messages are then handled one at a time, each key still in
//! order, so a collision costs parallelism, never correctness. The hash is
//! foldhash, seeded at random per consumer, so keys that collide cannot be
//! chosen ahead; it is not a cryptographic hash (SipHash, the standard
//! library's, took a few per cent of a keyed message's whole cost), which
//! a collision, costing only parallelism, does not need.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use foldhash::fast::RandomState;

use crate::delivery::Delivery;

/// The hash that names a key's lane.
pub(crate) type LaneId = u64;

/// Lanes by their id; the id is a hash already, so the map does not hash
/// it again.
pub(crate) type LaneTable = HashMap<LaneId, VecDeque<Delivery>, BuildHasherDefault<LaneIdHasher>>;

/// Names lanes: hashes keys with a seed of its own.
#[derive(Debug, Default)]
pub(crate) struct LaneIds {
    seed: RandomState,
}

impl LaneIds {
    /// The lane of `key`.
    pub(crate) fn of(&self, key: &str) -> LaneId {
        self.seed.hash_one(key)
    }
}

/// Passes a [`LaneId`] through as its own hash.
#[derive(Debug, Default)]
pub(crate) struct LaneIdHasher(u64);

impl Hasher for LaneIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in all the same.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_names_the_same_lane() {
        let ids = LaneIds::default();
        assert_eq!(ids.of("order-1"), ids.of("order-1"));
        assert_ne!(ids.of("order-1"), ids.of("order-2"));
        let mut table = LaneTable::default();
        table.insert(ids.of("order-1"), VecDeque::new());
        assert!(table.contains_key(&ids.of("order-1")));
        assert!(!table.contains_key(&ids.of("order-2")));
    }
}
