//! CPU time the bench process has used, for figures that hold on a busy
//! machine: wall-clock rates move with whatever else the machine runs,
//! CPU time per message much less so.

use std::time::Duration;

/// CPU time used so far by every live thread of this process, from the
/// scheduler's own nanosecond account (`/proc/self/task/*/schedstat`).
/// Measure with the same threads alive at both ends (a tokio runtime's
/// workers), since a thread that exits takes its time with it.
pub(crate) fn used() -> Duration {
    let mut nanos = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let Ok(task) = task else { continue };
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        nanos += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(nanos)
}
