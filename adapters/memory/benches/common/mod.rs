//! What the memory benches share: the no-op handler that says when the
//! last message arrived, the message count from the command line, and the
//! process's CPU time. Each bench uses some of it.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use courier_core::runtime::{self, Handler};
use tokio::sync::Notify;

/// The first number on the command line (`_` allowed as a separator), or
/// `default`.
pub(crate) fn message_count(default: usize) -> usize {
    std::env::args()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A tokio runtime with `workers` worker threads and every driver.
pub(crate) fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A no-op raw handler that counts its calls into `seen` and wakes `last`
/// at the `messages`th.
pub(crate) struct Counting {
    pub(crate) seen: Arc<AtomicU64>,
    pub(crate) last: Arc<Notify>,
}

impl Counting {
    /// A counter and its handler, for `messages` messages.
    pub(crate) fn handler(messages: usize) -> (Self, impl Handler) {
        let seen = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Notify::new());
        let handler = {
            let (seen, last) = (seen.clone(), last.clone());
            runtime::raw(move |_message| {
                if seen.fetch_add(1, Ordering::Relaxed) + 1 == messages as u64 {
                    last.notify_one();
                }
                std::future::ready(Ok(()))
            })
        };
        (Counting { seen, last }, handler)
    }
}

/// CPU time used so far by every live thread of this process, from the
/// scheduler's own nanosecond account (`/proc/self/task/*/schedstat`), for
/// figures that hold on a busy machine: wall-clock rates move with
/// whatever else the machine runs, CPU time per message much less so.
/// Measure with the same threads alive at both ends (a tokio runtime's
/// workers), since a thread that exits takes its time with it.
pub(crate) fn cpu_used() -> Duration {
    courier_testkit::bench::cpu_used()
}

/// The broker settings of every memory bench: no history kept, and no
/// bound on a group's queue, since the benches load the whole run before
/// consuming it.
pub(crate) fn bench_config() -> courier_memory::MemoryConfig {
    courier_memory::MemoryConfig::default()
        .retention(0)
        .max_queue_len(usize::MAX)
}

/// CPU time used so far by the calling thread, exact to the nanosecond
/// (`CLOCK_THREAD_CPUTIME_ID`): for a round that runs entirely on one
/// thread (a current-thread runtime), what the round cost, whatever else
/// the machine runs. Wall-clock time elsewhere.
pub(crate) fn thread_cpu() -> Duration {
    #[cfg(unix)]
    {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(
            u64::try_from(now.tv_sec).unwrap_or(0),
            u32::try_from(now.tv_nsec).unwrap_or(0),
        )
    }
    #[cfg(not(unix))]
    {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed()
    }
}
