//! Deadlines that saturate: a timeout of [`Duration::MAX`] means "no limit".

use std::time::{Duration, Instant, SystemTime};

/// How far on a deadline lies when the wait it ends has no useful limit:
/// about thirty years.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// `from + after`, or a point about thirty years on when that does not fit
/// in an [`Instant`]: a timeout of [`Duration::MAX`] means "no limit", never
/// a panic.
///
/// ```
/// use std::time::{Duration, Instant};
/// use courier_core::resilience::deadline_after;
///
/// let now = Instant::now();
/// assert_eq!(deadline_after(now, Duration::from_secs(1)), now + Duration::from_secs(1));
/// assert!(deadline_after(now, Duration::MAX) > now + Duration::from_secs(10 * 365 * 86_400));
/// ```
pub fn deadline_after(from: Instant, after: Duration) -> Instant {
    from.checked_add(after)
        .or_else(|| from.checked_add(FAR))
        .unwrap_or(from)
}

/// [`deadline_after`] for wall-clock time (deadlines carried in messages).
pub fn system_deadline_after(from: SystemTime, after: Duration) -> SystemTime {
    from.checked_add(after)
        .or_else(|| from.checked_add(FAR))
        .unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(deadline_after(now, Duration::ZERO), now);
        assert_eq!(deadline_after(now, Duration::MAX), now + FAR);
        let wall = SystemTime::now();
        assert_eq!(system_deadline_after(wall, Duration::MAX), wall + FAR);
        assert_eq!(
            system_deadline_after(wall, Duration::from_millis(5)),
            wall + Duration::from_millis(5)
        );
    }
}
