//! The per-partition commit watermark.
//!
//! Kafka remembers one position per partition and group: everything below
//! it counts as done. Deliveries are settled in any order, so the position
//! courier may commit is the lowest offset received and not yet settled (or
//! one past the last offset received when all are settled). An ack of a
//! later message therefore never moves the position past an earlier message
//! that is nacked, waiting for redelivery, or still being handled.
//!
//! Offsets settled above the position are not lost either: they travel with
//! the commit as its metadata ([`Watermark::metadata`]), and the next owner
//! of the partition skips them ([`skipped_offsets`]). A broker that does not
//! return commit metadata makes them come back instead: at least once, never
//! lost.

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;

/// Prefix and version of courier's commit metadata.
const METADATA_PREFIX: &str = "courier1:";

/// Longest commit metadata courier writes, in bytes. Apache Kafka's default
/// limit (`offset.metadata.max.bytes`) is 4096; longer sets are cut, and the
/// offsets cut off are delivered again after a rebalance or restart.
pub(crate) const MAX_METADATA_LEN: usize = 3000;

/// What to do with a record the consumer fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// New: hand it out.
    Deliver,
    /// Settled by an earlier owner of the partition (commit metadata): do
    /// not hand it out; it already counts as settled.
    AlreadySettled,
    /// At or below an offset already received (a fetch repeated after a
    /// pause or reconnect): it is in flight or settled already; ignore it.
    Repeated,
}

/// Offsets received from one partition and whether each is settled.
#[derive(Debug, Default)]
pub(crate) struct Watermark {
    /// Offsets received whose position is not yet committable, increasing,
    /// with whether each is settled. The front is always unsettled.
    window: VecDeque<(i64, bool)>,
    /// One past the highest offset received.
    next: Option<i64>,
    /// Offsets an earlier owner settled above its committed position.
    skip: BTreeSet<i64>,
}

impl Watermark {
    /// A watermark for a newly assigned partition whose earlier owner
    /// settled `skip` above the committed position.
    pub(crate) fn new(skip: BTreeSet<i64>) -> Self {
        Watermark {
            window: VecDeque::new(),
            next: None,
            skip,
        }
    }

    /// Records that `offset` was fetched. Offsets arrive in increasing order;
    /// a repeated or lower one is reported as [`Received::Repeated`].
    pub(crate) fn receive(&mut self, offset: i64) -> Received {
        if self.next.is_some_and(|next| offset < next) {
            return Received::Repeated;
        }
        self.next = Some(offset + 1);
        if !self.skip.is_empty() {
            // Entries below the offset can never arrive any more.
            self.skip = self.skip.split_off(&offset);
            if self.skip.remove(&offset) {
                if !self.window.is_empty() {
                    self.window.push_back((offset, true));
                }
                return Received::AlreadySettled;
            }
        }
        self.window.push_back((offset, false));
        Received::Deliver
    }

    /// Marks `offset` settled. Returns whether the committable position
    /// moved. Settling an offset not in the window (already settled, or
    /// never received) changes nothing.
    pub(crate) fn settle(&mut self, offset: i64) -> bool {
        let Some(index) = self.index_of(offset) else {
            return false;
        };
        if self.window[index].1 {
            return false;
        }
        self.window[index].1 = true;
        if index != 0 {
            return false;
        }
        while self.window.front().is_some_and(|&(_, settled)| settled) {
            self.window.pop_front();
        }
        true
    }

    /// Whether `offset` is received and not yet settled.
    pub(crate) fn is_unsettled(&self, offset: i64) -> bool {
        self.index_of(offset).is_some_and(|i| !self.window[i].1)
    }

    /// Where `offset` is in the window. Offsets are mostly consecutive, so
    /// the place it would have then is tried before searching.
    fn index_of(&self, offset: i64) -> Option<usize> {
        let &(front, _) = self.window.front()?;
        let guess = usize::try_from(offset.checked_sub(front)?).ok()?;
        if self.window.get(guess).is_some_and(|&(o, _)| o == offset) {
            return Some(guess);
        }
        self.window.binary_search_by_key(&offset, |&(o, _)| o).ok()
    }

    /// The offset to commit: the lowest unsettled one, or one past the
    /// highest received. `None` before anything was received.
    pub(crate) fn position(&self) -> Option<i64> {
        match self.window.front() {
            Some(&(offset, _)) => Some(offset),
            None => self.next,
        }
    }

    /// How many received offsets are not yet settled.
    #[cfg(test)]
    pub(crate) fn unsettled(&self) -> usize {
        self.window.iter().filter(|(_, settled)| !settled).count()
    }

    /// The commit metadata recording the offsets settled from
    /// [`Watermark::position`] on, together with the offsets an earlier
    /// owner settled that were not fetched again yet (the position itself may
    /// be one of those). Empty when there are none.
    /// At most [`MAX_METADATA_LEN`] bytes: the highest offsets are left out
    /// when they do not fit (they are then delivered again, never lost).
    pub(crate) fn metadata(&self) -> String {
        let Some(position) = self.position() else {
            return String::new();
        };
        let settled = self
            .window
            .iter()
            .filter(|(_, settled)| *settled)
            .map(|&(offset, _)| offset)
            .chain(self.skip.range(position..).copied());
        encode(position, settled)
    }
}

/// Encodes offsets from `position` on (increasing) as
/// `courier1:<position>:<ranges>`, ranges relative to the position
/// (`3-5,9`), cut to [`MAX_METADATA_LEN`].
fn encode(position: i64, offsets: impl Iterator<Item = i64>) -> String {
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for offset in offsets {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == offset => *end = offset,
            Some((_, end)) if *end >= offset => {}
            _ => ranges.push((offset, offset)),
        }
    }
    if ranges.is_empty() {
        return String::new();
    }
    let mut text = format!("{METADATA_PREFIX}{position}:");
    let header = text.len();
    for (start, end) in ranges {
        let mut part = String::new();
        if text.len() > header {
            part.push(',');
        }
        let (from, to) = (start - position, end - position);
        if from == to {
            let _ = write!(part, "{from}");
        } else {
            let _ = write!(part, "{from}-{to}");
        }
        if text.len() + part.len() > MAX_METADATA_LEN {
            break;
        }
        text.push_str(&part);
    }
    if text.len() == header {
        return String::new();
    }
    text
}

/// The offsets an earlier owner of a partition settled above its committed
/// position, read from the commit's metadata. Metadata written for another
/// position (or by another client) is ignored: those offsets are then
/// delivered again, the safe direction.
pub(crate) fn skipped_offsets(committed: i64, metadata: &str) -> BTreeSet<i64> {
    let mut skip = BTreeSet::new();
    let Some(rest) = metadata.strip_prefix(METADATA_PREFIX) else {
        return skip;
    };
    let Some((position, ranges)) = rest.split_once(':') else {
        return skip;
    };
    if position.parse::<i64>().ok() != Some(committed) {
        return skip;
    }
    for range in ranges.split(',') {
        let (from, to) = match range.split_once('-') {
            Some((from, to)) => (from.parse::<i64>(), to.parse::<i64>()),
            None => (range.parse::<i64>(), range.parse::<i64>()),
        };
        let (Ok(from), Ok(to)) = (from, to) else {
            return BTreeSet::new();
        };
        // A corrupt range must not make us skip an unbounded number of offsets.
        if from < 0 || to < from || to - from > 1_000_000 {
            return BTreeSet::new();
        }
        skip.extend((from..=to).map(|d| committed + d));
    }
    skip
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    #[test]
    fn position_waits_for_the_lowest_unsettled_offset() {
        let mut w = Watermark::default();
        assert_eq!(w.position(), None);
        for offset in 10..15 {
            assert_eq!(w.receive(offset), Received::Deliver);
        }
        assert_eq!(w.position(), Some(10));
        assert!(!w.settle(12));
        assert!(!w.settle(11));
        assert_eq!(w.position(), Some(10), "later acks never skip offset 10");
        assert!(w.settle(10));
        assert_eq!(w.position(), Some(13));
        assert!(w.settle(13) && w.settle(14));
        assert_eq!(w.position(), Some(15));
        assert_eq!(w.unsettled(), 0);
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        // Compaction and transaction markers leave holes in the offsets.
        let mut w = Watermark::default();
        for offset in [3, 7, 8, 20] {
            w.receive(offset);
        }
        assert!(!w.settle(7));
        assert!(w.settle(3));
        assert_eq!(w.position(), Some(8));
        assert!(w.settle(8));
        assert_eq!(w.position(), Some(20));
        assert!(w.settle(20));
        assert_eq!(w.position(), Some(21));
    }

    #[test]
    fn settling_twice_or_unknown_offsets_changes_nothing() {
        let mut w = Watermark::default();
        w.receive(0);
        w.receive(1);
        assert!(!w.settle(1));
        assert!(!w.settle(1));
        assert!(!w.settle(5));
        assert!(w.is_unsettled(0));
        assert!(!w.is_unsettled(1));
        assert_eq!(w.position(), Some(0));
    }

    #[test]
    fn repeated_fetches_are_ignored() {
        let mut w = Watermark::default();
        w.receive(0);
        w.receive(1);
        assert_eq!(w.receive(1), Received::Repeated);
        assert_eq!(w.receive(0), Received::Repeated);
        assert_eq!(w.unsettled(), 2);
    }

    #[test]
    fn metadata_round_trips_the_settled_offsets_above_the_position() {
        let mut w = Watermark::default();
        for offset in 100..120 {
            w.receive(offset);
        }
        for offset in [103, 104, 105, 109, 119] {
            w.settle(offset);
        }
        assert_eq!(w.position(), Some(100));
        let metadata = w.metadata();
        assert_eq!(metadata, "courier1:100:3-5,9,19");
        let skip = skipped_offsets(100, &metadata);
        assert_eq!(
            skip.into_iter().collect::<Vec<_>>(),
            vec![103, 104, 105, 109, 119]
        );
        // Metadata for another position is not trusted.
        assert!(skipped_offsets(101, &metadata).is_empty());
        assert!(skipped_offsets(100, "other client's text").is_empty());
        assert!(skipped_offsets(100, "courier1:100:0-99999999").is_empty());
    }

    #[test]
    fn the_next_owner_skips_what_the_previous_one_settled() {
        let mut first = Watermark::default();
        for offset in 0..6 {
            first.receive(offset);
        }
        first.settle(0);
        first.settle(2);
        first.settle(4);
        let (position, metadata) = (first.position().unwrap(), first.metadata());
        assert_eq!(position, 1);

        let mut second = Watermark::new(skipped_offsets(position, &metadata));
        let delivered: Vec<i64> = (1..6)
            .filter(|&o| second.receive(o) == Received::Deliver)
            .collect();
        assert_eq!(delivered, vec![1, 3, 5]);
        assert_eq!(second.position(), Some(1));
        assert_eq!(second.metadata(), "courier1:1:1,3");
        second.settle(1);
        assert_eq!(second.position(), Some(3));
        second.settle(3);
        second.settle(5);
        assert_eq!(second.position(), Some(6));
        assert_eq!(second.metadata(), "");
    }

    #[test]
    fn skipped_offsets_not_fetched_yet_stay_in_the_metadata() {
        let mut w = Watermark::new([5, 6, 9].into_iter().collect());
        w.receive(4);
        assert_eq!(w.metadata(), "courier1:4:1-2,5");
        assert_eq!(w.receive(5), Received::AlreadySettled);
        assert_eq!(w.metadata(), "courier1:4:1-2,5");
        w.settle(4);
        // 6 was never fetched, so the position stops there, but the
        // metadata says it is settled.
        assert_eq!(w.position(), Some(6));
        assert_eq!(w.metadata(), "courier1:6:0,3");
        assert_eq!(w.receive(6), Received::AlreadySettled);
        assert_eq!(w.position(), Some(7));
        assert_eq!(w.metadata(), "courier1:7:2");
    }

    #[test]
    fn long_metadata_is_cut_keeping_the_lowest_offsets() {
        let mut w = Watermark::default();
        for offset in 0..10_000 {
            w.receive(offset);
        }
        for offset in (1..10_000).step_by(2) {
            w.settle(offset);
        }
        let metadata = w.metadata();
        assert!(metadata.len() <= MAX_METADATA_LEN, "{}", metadata.len());
        let skip = skipped_offsets(0, &metadata);
        assert!(skip.len() > 100);
        let expected: Vec<i64> = (1..10_000).step_by(2).take(skip.len()).collect();
        assert_eq!(skip.into_iter().collect::<Vec<_>>(), expected);
    }

    /// Any settle order, fetches interleaved with settlements: the position
    /// is always the lowest unsettled offset (never past it), or one past
    /// the highest received when all are settled; the metadata never names
    /// an unsettled offset.
    #[test]
    fn randomized_settle_orders_never_skip_an_unsettled_offset() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for round in 0..300 {
            let count = rng.random_range(1..400);
            let mut offsets: Vec<i64> = Vec::new();
            let mut next = rng.random_range(0..1000);
            for _ in 0..count {
                offsets.push(next);
                next += rng.random_range(1..4); // holes, as after compaction
            }
            let mut order = offsets.clone();
            order.shuffle(&mut rng);
            let mut w = Watermark::default();
            let mut unsettled: BTreeSet<i64> = BTreeSet::new();
            let mut fetch = offsets.iter().copied().peekable();
            let mut highest = None;
            for offset in order {
                // Fetch in order up to the offset about to be settled, and
                // sometimes further.
                while let Some(&o) = fetch.peek() {
                    if o > offset && rng.random_bool(0.5) {
                        break;
                    }
                    fetch.next();
                    assert_eq!(w.receive(o), Received::Deliver);
                    unsettled.insert(o);
                    highest = Some(o);
                }
                w.settle(offset);
                unsettled.remove(&offset);
                let position = w.position().expect("received something");
                match unsettled.first() {
                    Some(&low) => assert_eq!(position, low, "round {round}"),
                    None => assert_eq!(Some(position), highest.map(|h| h + 1), "round {round}"),
                }
                for o in skipped_offsets(position, &w.metadata()) {
                    assert!(!unsettled.contains(&o), "round {round}: {o} is unsettled");
                }
            }
            assert_eq!(w.position(), Some(offsets.last().unwrap() + 1));
            assert_eq!(w.metadata(), "");
        }
    }

    /// Several consumers in a row, each settling a random part of what it
    /// received before "crashing" (handing over position and metadata):
    /// every offset is settled exactly once across them all, none skipped.
    #[test]
    fn handovers_lose_nothing_and_repeat_nothing_settled() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for _ in 0..200 {
            let total: i64 = rng.random_range(1..300);
            let mut settled_by_anyone: BTreeSet<i64> = BTreeSet::new();
            let (mut position, mut metadata) = (0_i64, String::new());
            let mut owners = 0;
            while position < total {
                owners += 1;
                assert!(owners < 10_000, "no progress");
                let mut w = Watermark::new(skipped_offsets(position, &metadata));
                let upto = rng.random_range(position..=total);
                let mut delivered = Vec::new();
                for offset in position..upto {
                    if w.receive(offset) == Received::Deliver {
                        delivered.push(offset);
                    }
                }
                delivered.shuffle(&mut rng);
                let keep = rng.random_range(0..=delivered.len());
                for &offset in &delivered[..keep] {
                    assert!(
                        settled_by_anyone.insert(offset),
                        "offset {offset} delivered again after it was settled"
                    );
                    w.settle(offset);
                }
                if let Some(p) = w.position() {
                    position = p;
                    metadata = w.metadata();
                }
            }
            assert_eq!(settled_by_anyone, (0..total).collect());
        }
    }
}
