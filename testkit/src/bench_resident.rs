//! Resident memory while many messages go through the consumer runtime:
//! that a long run stays flat on every broker, its growth bounded by what
//! the prefetch holds.
//!
//! The publisher keeps at most two batches of [`BATCH`] messages ahead of
//! the handler, so neither the broker's backlog nor the publisher's own
//! buffers grow with the run; whatever the process keeps growing after the
//! first tenth of the run is the runtime's or the adapter's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use courier_core::runtime::{Consumer, RetryPolicy, raw};
use courier_core::{Broker, Message, Subscription};
use tokio::sync::Notify;

use crate::bench::{Row, Unit};

/// Messages per publish batch; the publisher stays at most two batches
/// ahead of the handler.
pub const BATCH: usize = 1_000;

/// Most the resident memory may grow after the first tenth of a run: the
/// runtime's default prefetch of 64-byte messages holds far less; the rest
/// is the allocator's slack.
pub const MAX_GROWTH_BYTES: i64 = 16 << 20;

/// How a [`resident_over_run`] drives the runtime.
#[derive(Debug, Clone, Copy)]
pub struct ResidentPlan {
    /// Messages in all.
    pub messages: usize,
    /// Payload bytes of each.
    pub payload: usize,
    /// The consumer's concurrency.
    pub concurrency: usize,
    /// Distinct keys the messages cycle through (0: no keys).
    pub keys: usize,
    /// The longest the handler may go without a message before the run
    /// fails as stalled.
    pub stall: Duration,
}

impl ResidentPlan {
    /// `messages` of 64 bytes at concurrency 16 over 16 keys, failing after
    /// 60 s without progress.
    pub fn new(messages: usize) -> Self {
        ResidentPlan {
            messages,
            payload: 64,
            concurrency: 16,
            keys: 16,
            stall: Duration::from_secs(60),
        }
    }

    fn message(&self, payload: &[u8], index: usize) -> Message {
        let message = Message::new(payload.to_vec());
        if self.keys == 0 {
            message
        } else {
            message.with_key(format!("key-{}", index % self.keys))
        }
    }

    /// What the runtime's case is called in a printed line or row.
    pub fn label(&self) -> String {
        let keys = if self.keys == 0 {
            String::new()
        } else {
            format!(" keys={}", self.keys)
        };
        format!(
            "resident memory, {} msgs through runtime c={}{keys}",
            self.messages, self.concurrency
        )
    }
}

/// The resident memory a [`resident_over_run`] sampled.
#[derive(Debug, Clone)]
pub struct ResidentRun {
    /// `(messages published, resident bytes)`: before the first publish,
    /// every tenth of the run, and once the last message was handled.
    pub samples: Vec<(usize, i64)>,
    /// From the consumer's start to the last message handled.
    pub elapsed: Duration,
    plan: ResidentPlan,
}

impl ResidentRun {
    /// The resident memory once the first tenth of the run went through
    /// (caches, pools and the broker's buffers warmed up).
    pub fn baseline(&self) -> i64 {
        self.samples
            .iter()
            .find(|(published, _)| *published >= self.plan.messages / 10)
            .map_or(self.samples[0].1, |s| s.1)
    }

    /// The most resident memory sampled.
    pub fn peak(&self) -> i64 {
        self.samples
            .iter()
            .map(|s| s.1)
            .max()
            .unwrap_or_else(|| self.baseline())
    }

    /// How much the resident memory grew after the first tenth.
    pub fn growth(&self) -> i64 {
        self.peak() - self.baseline()
    }

    /// Prints every sample, the growth against [`MAX_GROWTH_BYTES`] and the
    /// rate.
    pub fn print(&self) {
        println!("{}", self.plan.label());
        for (published, bytes) in &self.samples {
            println!("  {published:>9} messages  {:>8.1} MiB", mib(*bytes));
        }
        println!(
            "  growth after the first tenth: {:+.1} MiB (bound {} MiB); {:.0} msg/s",
            mib(self.growth()),
            MAX_GROWTH_BYTES >> 20,
            self.plan.messages as f64 / self.elapsed.as_secs_f64()
        );
    }

    /// A row for the combined table: the resident memory after the first
    /// tenth (raw column) against the peak (courier column), so a ratio of
    /// 1.00 means flat.
    pub fn row(&self, adapter: &str) -> Row {
        let (baseline, peak) = (self.baseline() as f64, self.peak() as f64);
        Row {
            adapter: adapter.to_owned(),
            case: format!("runtime RSS {} msgs: 1st tenth / peak", self.plan.messages),
            payload: self.plan.payload,
            unit: Unit::Bytes,
            raw: baseline,
            courier: peak,
            ratio: peak / baseline,
            rounds: 1,
        }
    }

    /// Whether the growth stayed within [`MAX_GROWTH_BYTES`].
    pub fn within_bound(&self) -> bool {
        self.growth() <= MAX_GROWTH_BYTES
    }
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Resident memory of this process, in bytes (`/proc/self/statm`).
///
/// # Panics
///
/// Where `/proc/self/statm` cannot be read (not Linux).
pub fn resident_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Pushes the plan's messages through the consumer runtime on `broker`
/// (topic and group of `subscription`, which this provisions), the
/// publisher at most two batches ahead of the handler, and samples the
/// resident memory every tenth of the run.
///
/// # Panics
///
/// If the consumer cannot start, a publish fails, or the handler gets no
/// message for the plan's `stall`.
pub async fn resident_over_run(
    broker: &Broker,
    subscription: Subscription,
    plan: ResidentPlan,
) -> ResidentRun {
    let topic = subscription.topic().to_owned();
    let progress = Arc::new(Progress::default());
    let handler = raw({
        let progress = progress.clone();
        move |_message: Message| {
            progress.handled_one();
            async { Ok(()) }
        }
    });
    broker.provision(&subscription).await.expect("provision");
    let started = Instant::now();
    let consumer = Consumer::builder(broker, subscription, handler)
        .concurrency(plan.concurrency)
        .retry(RetryPolicy::none())
        .start()
        .await
        .expect("start consumer");
    let payload = vec![0x2a_u8; plan.payload];
    let tenth = (plan.messages / 10).max(BATCH);
    let mut samples = vec![(0, resident_bytes())];
    for start in (0..plan.messages).step_by(BATCH) {
        progress
            .wait_for((start + 1).saturating_sub(2 * BATCH), plan.stall)
            .await;
        let batch = (start..(start + BATCH).min(plan.messages))
            .map(|i| plan.message(&payload, i))
            .collect();
        broker.publish_batch(&topic, batch).await.expect("publish");
        if (start + BATCH).is_multiple_of(tenth) {
            samples.push((start + BATCH, resident_bytes()));
        }
    }
    progress.wait_for(plan.messages, plan.stall).await;
    let elapsed = started.elapsed();
    samples.push((plan.messages, resident_bytes()));
    consumer.shutdown().await.expect("shutdown");
    ResidentRun {
        samples,
        elapsed,
        plan,
    }
}

/// Messages handled so far, and a wake-up for the publisher waiting until
/// they reach its goal.
#[derive(Debug, Default)]
struct Progress {
    handled: AtomicUsize,
    goal: AtomicUsize,
    reached: Notify,
}

impl Progress {
    fn handled_one(&self) {
        let handled = self.handled.fetch_add(1, Ordering::SeqCst) + 1;
        if handled >= self.goal.load(Ordering::SeqCst) {
            self.reached.notify_one();
        }
    }

    /// Waits until `goal` messages were handled.
    ///
    /// # Panics
    ///
    /// If none is handled for `stall`.
    async fn wait_for(&self, goal: usize, stall: Duration) {
        self.goal.store(goal, Ordering::SeqCst);
        let mut last = self.handled.load(Ordering::SeqCst);
        while last < goal {
            let woken = tokio::time::timeout(stall, self.reached.notified()).await;
            let now = self.handled.load(Ordering::SeqCst);
            assert!(
                woken.is_ok() || now > last,
                "the runtime stalled at {now} of {goal} handled"
            );
            last = now;
        }
    }
}

/// Messages a resident-memory run pushes through: the first number on the
/// command line (`cargo bench --bench runtime_memory -- 200000`), else
/// [`RESIDENT_MESSAGES_ENV`], else 1,000,000.
pub fn resident_messages() -> usize {
    std::env::args()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse().ok())
        .unwrap_or_else(|| crate::bench::env_or(RESIDENT_MESSAGES_ENV, 1_000_000))
        .max(BATCH)
}

/// The variable that sets how many messages a resident-memory run of a
/// broker adapter pushes through (see [`resident_messages`]).
pub const RESIDENT_MESSAGES_ENV: &str = "COURIER_BENCH_RSS_MESSAGES";

/// The `runtime_memory` benchmark of a broker adapter: [`ResidentPlan::new`]
/// with [`resident_messages`] through the runtime on the broker `connect`
/// gives (a fresh topic and group), on [`crate::bench::runtime`]; prints
/// the samples and a row (appended to the bench output file like every
/// row), and exits with an error when the growth passes
/// [`MAX_GROWTH_BYTES`].
///
/// # Panics
///
/// As [`resident_over_run`].
pub fn resident_bench<F, Fut>(adapter: &str, connect: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Broker>,
{
    let plan = ResidentPlan::new(resident_messages());
    let run = crate::bench::runtime().block_on(async {
        let broker = connect().await;
        // Unique per run: a durable broker may keep the last run's group.
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!("resident-{}", since_epoch.as_millis());
        let run = resident_over_run(&broker, Subscription::new(&name, &name), plan).await;
        broker.close().await.expect("close");
        run
    });
    run.print();
    let mut report = crate::bench::Report::new(format!(
        "{adapter}: resident memory over {} messages of {} B, runtime c={} with {} keys, \
         publisher at most {} messages ahead",
        plan.messages,
        plan.payload,
        plan.concurrency,
        plan.keys,
        2 * BATCH
    ));
    report.push(run.row(adapter));
    report.finish();
    if !run.within_bound() {
        eprintln!("resident memory grew by more than the bound");
        std::process::exit(1);
    }
}
