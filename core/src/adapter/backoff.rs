//! The one wait between attempts that every adapter's reconnect, resume and
//! retry loop uses: exponential, capped, and jittered, so that the clients
//! of a restarted broker do not all come back in the same instant.
//!
//! Attempt `n` (from 1) nominally waits `d = min × 2ⁿ⁻¹`, capped at `max`;
//! the actual wait is drawn uniformly from `[d / 2, d)` ("equal jitter").
//! So a wait never exceeds the cap, still grows with every failure, and
//! spreads even once the cap is reached (where a jitter added on top of
//! the cap would either break the cap or be cut off by it). All arithmetic
//! saturates: any attempt number and any durations give a wait within
//! `[0, max]`. The exponential part is [`backon`]'s `ExponentialBuilder`.
//!
//! A loop keeps its own bound (a give-up time, a deadline) and only asks
//! this policy how long to wait before the next attempt.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// A jittered exponential backoff with a cap; see the [module](self).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_core::adapter::backoff::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(3));
/// for (attempt, wait) in (1..=10).zip(backoff.delays()) {
///     let nominal = (Duration::from_millis(100) * 2u32.pow(attempt - 1)).min(Duration::from_secs(3));
///     assert!(wait >= nominal / 2 && wait <= nominal);
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

/// Attempts past this many doublings all wait the capped amount (2⁶⁴ of any
/// positive duration is beyond [`Duration::MAX`]).
const SATURATED_AFTER: u32 = 64;

impl Backoff {
    /// The first nominal wait is `min`, doubling up to `max` (a `max`
    /// below `min` is taken as `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
        }
    }

    /// The first nominal wait.
    pub fn min_delay(&self) -> Duration {
        self.min
    }

    /// The cap: no wait is longer.
    pub fn max_delay(&self) -> Duration {
        self.max
    }

    /// The waits before attempts 2, 3, ... (the wait after failure 1, 2,
    /// ...), without end: a loop stops by its own bound.
    pub fn delays(&self) -> Delays {
        // Halves with backon's jitter (`+ random × current`) give
        // `[d / 2, d)` for the nominal `d`, never above the cap.
        let exponential = ExponentialBuilder::default()
            .with_min_delay(self.min / 2)
            .with_max_delay(self.max / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        Delays {
            exponential,
            cap: self.max,
        }
    }

    /// The wait after the `failures`-th consecutive failure (1 for the
    /// first; 0 is taken as 1), freshly jittered: for loops that count
    /// their failures rather than keep a [`Delays`].
    pub fn delay(&self, failures: u32) -> Duration {
        let index = failures.saturating_sub(1).min(SATURATED_AFTER) as usize;
        self.delays().nth(index).unwrap_or(self.max)
    }
}

/// The waits of one run of attempts of a [`Backoff`]; never ends.
#[derive(Debug)]
pub struct Delays {
    exponential: ExponentialBackoff,
    cap: Duration,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.exponential.next().unwrap_or(self.cap).min(self.cap))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(3);

    fn nominal(failures: u32) -> Duration {
        MIN.saturating_mul(2u32.saturating_pow(failures - 1))
            .min(MAX)
    }

    #[test]
    fn waits_grow_within_half_and_whole_of_the_nominal() {
        let backoff = Backoff::new(MIN, MAX);
        for round in 0..50 {
            for (failures, wait) in (1..=20).zip(backoff.delays()) {
                let d = nominal(failures);
                assert!(
                    wait >= d / 2 && wait <= d,
                    "round {round}, failure {failures}: {wait:?} outside [{:?}, {d:?}]",
                    d / 2
                );
            }
        }
    }

    #[test]
    fn jitter_varies_the_waits_also_at_the_cap() {
        let backoff = Backoff::new(MIN, MAX);
        let first: HashSet<Duration> = (0..100).map(|_| backoff.delay(1)).collect();
        let capped: HashSet<Duration> = (0..100).map(|_| backoff.delay(30)).collect();
        // 100 draws from a continuous range: a handful of repeats at most.
        assert!(first.len() > 50, "first waits: {} distinct", first.len());
        assert!(capped.len() > 50, "capped waits: {} distinct", capped.len());
        assert!(capped.iter().all(|w| *w >= MAX / 2 && *w <= MAX));
    }

    #[test]
    fn the_cap_holds_for_every_attempt() {
        let backoff = Backoff::new(MIN, MAX);
        assert!(backoff.delays().take(1_000).all(|w| w <= MAX));
        for failures in [0, 1, 5, 63, 64, 65, 1_000, u32::MAX] {
            assert!(backoff.delay(failures) <= MAX, "failure {failures}");
        }
    }

    #[test]
    fn extreme_durations_saturate_instead_of_panicking() {
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert!(huge.delays().take(10).all(|w| w <= Duration::MAX));
        assert!(huge.delay(u32::MAX) <= Duration::MAX);
        let growing = Backoff::new(Duration::from_secs(1), Duration::MAX);
        let last = growing.delay(u32::MAX);
        assert!(last >= Duration::from_secs(1 << 20), "{last:?}");
        let inverted = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(inverted.max_delay(), Duration::from_secs(2));
        assert!(
            inverted
                .delays()
                .take(10)
                .all(|w| w <= Duration::from_secs(2))
        );
        let zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.delay(7), Duration::ZERO);
    }
}
