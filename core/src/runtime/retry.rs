//! How often and how patiently a failing message is tried again.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The consumer's retry policy: bounded attempts with exponential backoff
/// and jitter. After the last attempt fails, the message is dead-lettered.
///
/// The delay before attempt `n + 1` is `min_delay × factorⁿ⁻¹`, capped at
/// `max_delay`, plus (with jitter) a random extra of up to the same amount,
/// so delays grow even with jitter and retries of many messages spread out.
/// The maths are [`backon`]'s `ExponentialBuilder`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_core::runtime::RetryPolicy;
///
/// let policy = RetryPolicy::exponential()
///     .max_attempts(4)
///     .min_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(5));
/// let delays: Vec<_> = policy.without_jitter().delays().collect();
/// assert_eq!(delays, [100, 200, 400].map(Duration::from_millis));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    min_delay: Duration,
    max_delay: Duration,
    factor: f32,
    jitter: bool,
}

impl Default for RetryPolicy {
    /// 5 attempts, 200 ms doubling up to 10 s, with jitter.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The default policy: see [`RetryPolicy::default`].
    pub fn exponential() -> Self {
        Self::default()
    }

    /// One attempt only: any failure dead-letters the message.
    pub fn none() -> Self {
        Self::default().max_attempts(1)
    }

    /// Attempts in all, the first included (0 counts as 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Delay before the second attempt.
    pub fn min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }

    /// Longest delay between attempts (before jitter).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Growth of the delay per attempt (values below 1 count as 1).
    pub fn factor(mut self, factor: f32) -> Self {
        self.factor = if factor >= 1.0 { factor } else { 1.0 };
        self
    }

    /// Turns jitter off (it is on by default): delays become exact, which
    /// helps tests and little else.
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Attempts in all.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delays before the second, third, ... attempt: one fewer than
    /// [`RetryPolicy::attempts`].
    pub fn delays(&self) -> Delays {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize);
        if self.jitter {
            builder = builder.with_jitter();
        }
        Delays {
            inner: builder.build(),
        }
    }
}

/// The delays of one message's retries; see [`RetryPolicy::delays`].
#[derive(Debug)]
pub struct Delays {
    inner: ExponentialBackoff,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // backon multiplies in f32; round its float noise (39.999999 ms)
        // to whole microseconds.
        let delay = self.inner.next()?;
        let micros = (delay.as_nanos() + 500) / 1_000;
        Some(Duration::from_micros(
            u64::try_from(micros).unwrap_or(u64::MAX),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stop_after_the_last_attempt() {
        let policy = RetryPolicy::exponential()
            .max_attempts(5)
            .min_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50))
            .factor(2.0);
        let exact: Vec<_> = policy.without_jitter().delays().collect();
        assert_eq!(exact, [10, 20, 40, 50].map(Duration::from_millis));
        for _ in 0..100 {
            let jittered: Vec<_> = policy.delays().collect();
            assert_eq!(jittered.len(), 4);
            for (delay, base) in jittered.iter().zip(&exact) {
                assert!(
                    *delay >= *base && *delay <= *base * 2,
                    "{delay:?} vs {base:?}"
                );
            }
        }
        assert_eq!(RetryPolicy::none().delays().count(), 0);
    }
}
