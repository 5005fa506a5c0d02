//! What the consumer runtime allocates per message, and that its memory
//! stays flat over a million messages, on the in-process broker.
//!
//! ```text
//! cargo bench -p courier-memory --bench runtime_memory               # 1,000,000 messages
//! cargo bench -p courier-memory --bench runtime_memory -- 200000     # or any count
//! ```
//!
//! Part 1 counts heap allocations (through a counting global allocator)
//! while 100,000 messages published beforehand are consumed: by a bare
//! subscribe-and-ack loop, and by the runtime with a no-op raw handler at
//! concurrency 1, at concurrency 16 without keys and with 16 keys.
//!
//! Part 2 pushes the messages through the runtime (concurrency 16, 16
//! keys) while a publisher keeps at most two batches of 1,000 ahead of the
//! handler, and samples the process's resident memory (`/proc/self/statm`)
//! every tenth of the run. The growth after the first tenth must stay
//! within what the prefetch can hold; the bench exits with an error if it
//! grows by more than 16 MiB.

use std::sync::atomic::Ordering;
use std::time::Instant;

use courier_core::runtime::{Consumer, RetryPolicy};
use courier_core::{Broker, Message, Subscription};
use courier_memory::MemoryBroker;
use futures::StreamExt;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

mod common;

use common::{Counting, message_count, multi_thread};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const PAYLOAD: [u8; 64] = [0x2a; 64];
const KEYS: usize = 16;
const COUNTED: usize = 100_000;
const BATCH: usize = 1_000;
/// Most the resident memory may grow after the first tenth of part 2.
const MAX_GROWTH_BYTES: i64 = 16 << 20;

#[derive(Debug, Clone, Copy)]
enum Case {
    Bare,
    Runtime { concurrency: usize, keyed: bool },
}

impl Case {
    fn label(self) -> String {
        match self {
            Case::Bare => "bare subscribe+ack".to_owned(),
            Case::Runtime {
                concurrency,
                keyed: false,
            } => format!("runtime c={concurrency}"),
            Case::Runtime {
                concurrency,
                keyed: true,
            } => format!("runtime c={concurrency} keys={KEYS}"),
        }
    }
}

fn message(i: usize, keyed: bool) -> Message {
    let message = Message::new(&PAYLOAD[..]);
    if keyed {
        message.with_key(format!("key-{}", i % KEYS))
    } else {
        message
    }
}

async fn loaded_broker(messages: usize, keyed: bool) -> (Broker, Subscription) {
    let broker = MemoryBroker::with_config(common::bench_config()).into_broker();
    let sub = Subscription::new("bench", "bench");
    broker.provision(&sub).await.expect("provision");
    for start in (0..messages).step_by(BATCH) {
        let batch = (start..(start + BATCH).min(messages))
            .map(|i| message(i, keyed))
            .collect();
        broker.publish_batch("bench", batch).await.expect("publish");
    }
    (broker, sub)
}

/// Heap allocations per consumed message.
async fn allocations(case: Case) -> f64 {
    let keyed = matches!(case, Case::Runtime { keyed: true, .. });
    let (broker, sub) = loaded_broker(COUNTED, keyed).await;
    let region = Region::new(GLOBAL);
    match case {
        Case::Bare => {
            let mut stream = broker.subscribe(sub.prefetch(32)).await.expect("subscribe");
            for _ in 0..COUNTED {
                let delivery = stream.next().await.expect("open").expect("delivery");
                delivery.ack().await.expect("ack");
            }
        }
        Case::Runtime { concurrency, .. } => {
            let (counting, handler) = Counting::handler(COUNTED);
            let consumer = Consumer::builder(&broker, sub, handler)
                .concurrency(concurrency)
                .retry(RetryPolicy::none())
                .start()
                .await
                .expect("start");
            counting.last.notified().await;
            while consumer.metrics().snapshot().handled < COUNTED as u64 {
                tokio::task::yield_now().await;
            }
            consumer.shutdown().await.expect("shutdown");
        }
    }
    region.change().allocations as f64 / COUNTED as f64
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// Pushes `messages` through the runtime with the publisher at most two
/// batches ahead; returns the resident memory sampled every tenth.
async fn resident_over_run(messages: usize) -> Vec<(usize, i64)> {
    let broker = MemoryBroker::with_config(common::bench_config()).into_broker();
    let sub = Subscription::new("bench", "bench");
    let (counting, handler) = Counting::handler(messages);
    let consumer = Consumer::builder(&broker, sub, handler)
        .concurrency(16)
        .retry(RetryPolicy::none())
        .start()
        .await
        .expect("start");
    let tenth = (messages / 10).max(BATCH);
    let mut samples = vec![(0, resident_bytes())];
    for start in (0..messages).step_by(BATCH) {
        while counting.seen.load(Ordering::Relaxed) + (2 * BATCH) as u64 <= start as u64 {
            tokio::task::yield_now().await;
        }
        let batch = (start..(start + BATCH).min(messages))
            .map(|i| message(i, true))
            .collect();
        broker.publish_batch("bench", batch).await.expect("publish");
        if (start + BATCH).is_multiple_of(tenth) {
            samples.push((start + BATCH, resident_bytes()));
        }
    }
    counting.last.notified().await;
    samples.push((messages, resident_bytes()));
    consumer.shutdown().await.expect("shutdown");
    samples
}

fn main() {
    let messages = message_count(1_000_000);
    let rt = multi_thread(2);
    println!(
        "heap allocations per consumed message (courier-memory, {COUNTED} messages of {} bytes, \
         no-op handler)",
        PAYLOAD.len()
    );
    rt.block_on(async {
        // Warm-up: lazily initialised statics, thread-locals, pools.
        allocations(Case::Runtime {
            concurrency: 16,
            keyed: true,
        })
        .await;
        for case in [
            Case::Bare,
            Case::Runtime {
                concurrency: 1,
                keyed: false,
            },
            Case::Runtime {
                concurrency: 16,
                keyed: false,
            },
            Case::Runtime {
                concurrency: 16,
                keyed: true,
            },
        ] {
            println!("  {:<28} {:>6.2}", case.label(), allocations(case).await);
        }
    });
    println!(
        "resident memory while {messages} messages go through the runtime (c=16, {KEYS} keys, \
         publisher at most {} messages ahead)",
        2 * BATCH
    );
    let started = Instant::now();
    let samples = rt.block_on(resident_over_run(messages));
    let elapsed = started.elapsed();
    for (handled, bytes) in &samples {
        println!(
            "  {handled:>9} messages  {:>8.1} MiB",
            *bytes as f64 / 1048576.0
        );
    }
    let baseline = samples
        .iter()
        .find(|(handled, _)| *handled >= messages / 10)
        .map_or(samples[0].1, |s| s.1);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(baseline);
    let growth = peak - baseline;
    println!(
        "  growth after the first tenth: {:+.1} MiB (bound {} MiB); {:.0} msg/s",
        growth as f64 / 1048576.0,
        MAX_GROWTH_BYTES >> 20,
        messages as f64 / elapsed.as_secs_f64()
    );
    if growth > MAX_GROWTH_BYTES {
        eprintln!("resident memory grew by more than the bound");
        std::process::exit(1);
    }
}
