//! How long to wait before publishing a dead-letter copy again after the
//! publish failed: the same jittered exponential backoff for the consumer
//! runtime and for the copies adapters make of messages they cannot decode.

use std::time::Duration;

use crate::adapter::backoff::{Backoff, Delays};

/// The first wait before publishing a dead-letter copy again.
pub const DEAD_LETTER_RETRY_MIN_DELAY: Duration = Duration::from_millis(100);
/// The longest wait between two dead-letter publishes of one message.
pub const DEAD_LETTER_RETRY_MAX_DELAY: Duration = Duration::from_secs(30);

/// The adapters' one [`Backoff`], with its nominal waits doubled: it draws
/// each wait from `[d / 2, d)`, so the dead-letter waits come from
/// `[w, 2w)` for `w` = [`DEAD_LETTER_RETRY_MIN_DELAY`] × 2ⁿ⁻¹ capped at
/// [`DEAD_LETTER_RETRY_MAX_DELAY`]: never shorter than the unjittered wait.
fn backoff() -> Backoff {
    Backoff::new(
        DEAD_LETTER_RETRY_MIN_DELAY.saturating_mul(2),
        DEAD_LETTER_RETRY_MAX_DELAY.saturating_mul(2),
    )
}

/// The waits between the dead-letter publishes of one message: from
/// [`DEAD_LETTER_RETRY_MIN_DELAY`], doubling, jittered (each wait is at
/// least the unjittered one), at most [`DEAD_LETTER_RETRY_MAX_DELAY`] plus
/// its jitter, without end.
pub fn dead_letter_retry_delays() -> Delays {
    backoff().delays()
}

/// The wait after the `failures`-th failed dead-letter publish of one
/// message (counted from 1), for adapters that let the broker hold the
/// message meanwhile (a delayed redelivery) instead of holding it
/// themselves.
pub fn dead_letter_retry_delay(failures: u32) -> Duration {
    backoff().delay(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_from_the_minimum_to_the_maximum() {
        let delays: Vec<Duration> = dead_letter_retry_delays().take(12).collect();
        assert!(delays[0] >= DEAD_LETTER_RETRY_MIN_DELAY);
        assert!(delays[0] < DEAD_LETTER_RETRY_MIN_DELAY * 2);
        assert!(delays[3] >= DEAD_LETTER_RETRY_MIN_DELAY * 8);
        for delay in &delays {
            assert!(*delay <= DEAD_LETTER_RETRY_MAX_DELAY * 2, "{delay:?}");
        }
        assert!(delays[11] >= DEAD_LETTER_RETRY_MAX_DELAY);
        assert!(dead_letter_retry_delay(1) >= DEAD_LETTER_RETRY_MIN_DELAY);
        assert!(dead_letter_retry_delay(1_000) >= DEAD_LETTER_RETRY_MAX_DELAY);
    }
}
