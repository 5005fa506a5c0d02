//! What the consumer runtime costs over a bare subscribe-and-ack loop, on
//! the in-process broker, in one run.
//!
//! ```text
//! cargo bench -p courier-memory --bench runtime_overhead              # 200,000 messages, 7 rounds
//! cargo bench -p courier-memory --bench runtime_overhead -- 1000000   # or any count
//! cargo bench -p courier-memory --bench runtime_overhead -- c1        # only `runtime c=1`
//! ```
//!
//! Each case consumes the same number of 64-byte messages that were
//! published before the clock starts; the handler does nothing. The bare
//! loop (the raw side) uses the prefetch the runtime would choose for the
//! compared concurrency, so both see the same broker behaviour. Figures
//! are messages per second, medians of interleaved rounds (the raw side
//! first in even rounds, courier first in odd ones).
//!
//! Each case has a second row, `<case> cpu`: messages per second of CPU
//! time (all threads of the process, from the scheduler's account), which
//! a busy machine moves far less than wall-clock rates.
//!
//! `COURIER_BENCH_WORKERS` sets the number of worker threads (default: one
//! per core); `COURIER_BENCH_SIDE=raw` or `courier` runs one side only.
//!
//! Cases: `runtime c=1` (one message at a time, the dispatch task handles
//! it), `runtime c=8` (no keys), `runtime c=16 keys=16` (ordering lanes,
//! against a bare loop over the same keyed messages).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use courier_core::runtime::{self, Consumer, RetryPolicy};
use courier_core::{Broker, Message, Subscription};
use courier_memory::MemoryBroker;
use courier_testkit::bench::{Report, Rounds, Row, Side, Unit, interleaved, rate};
use futures::StreamExt;

mod common;

use common::{Counting, cpu_used, message_count, multi_thread};

const PAYLOAD: [u8; 64] = [0x2a; 64];
const KEYS: usize = 16;

fn prefetch(concurrency: usize) -> u16 {
    u16::try_from(concurrency * 2)
        .unwrap_or(u16::MAX)
        .max(runtime::MIN_PREFETCH)
}

async fn loaded_broker(messages: usize, keyed: bool) -> (Broker, Subscription) {
    let broker = MemoryBroker::with_config(common::bench_config()).into_broker();
    let sub = Subscription::new("bench", "bench");
    broker.provision(&sub).await.expect("provision");
    let mut sent = 0;
    while sent < messages {
        let n = (messages - sent).min(10_000);
        let batch = (sent..sent + n)
            .map(|i| {
                let m = Message::new(&PAYLOAD[..]);
                if keyed {
                    m.with_key(format!("key-{}", i % KEYS))
                } else {
                    m
                }
            })
            .collect();
        broker.publish_batch("bench", batch).await.expect("publish");
        sent += n;
    }
    (broker, sub)
}

/// Wall-clock and CPU time of one run.
#[derive(Debug, Clone, Copy)]
struct Took {
    wall: Duration,
    cpu: Duration,
}

/// Consumes `messages` with a bare loop and returns how long it took.
async fn bare(messages: usize, concurrency: usize, keyed: bool) -> Took {
    let (broker, sub) = loaded_broker(messages, keyed).await;
    let cpu = cpu_used();
    let start = Instant::now();
    let task = tokio::spawn(async move {
        let mut stream = broker
            .subscribe(sub.prefetch(prefetch(concurrency)))
            .await
            .unwrap();
        for _ in 0..messages {
            let delivery = stream.next().await.expect("open").expect("delivery");
            delivery.ack().await.expect("ack");
        }
    });
    task.await.expect("bare loop");
    Took {
        wall: start.elapsed(),
        cpu: cpu_used() - cpu,
    }
}

/// Consumes `messages` with the runtime and returns how long it took.
async fn through_runtime(messages: usize, concurrency: usize, keyed: bool) -> Took {
    let (broker, sub) = loaded_broker(messages, keyed).await;
    let (counting, handler) = Counting::handler(messages);
    let consumer = Consumer::builder(&broker, sub, handler)
        .concurrency(concurrency)
        .retry(RetryPolicy::none())
        .build();
    let metrics = consumer.metrics();
    let shutdown = consumer.shutdown_handle();
    let cpu = cpu_used();
    let start = Instant::now();
    let task = tokio::spawn(consumer.run());
    counting.last.notified().await;
    // Every handler call is made; the graceful shutdown waits for the last
    // acks, as the bare loop's end waits for its last. Awaited, not polled
    // for: a loop polling the metrics ran a number of times that varied
    // from run to run, and so did the instruction counts of
    // `scripts/instructions.sh`.
    shutdown.shutdown();
    task.await.expect("consumer task").expect("consumer");
    let took = Took {
        wall: start.elapsed(),
        cpu: cpu_used() - cpu,
    };
    assert_eq!(
        metrics.snapshot().handled,
        messages as u64,
        "every message handled and acked"
    );
    took
}

fn main() {
    let round_count = courier_testkit::bench::env_or(courier_testkit::bench::ROUNDS_ENV, 7).max(1);
    let messages = message_count(200_000);
    // `c1`, `c8`, `c16`: only these concurrencies.
    let only: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.strip_prefix('c').and_then(|c| c.parse().ok()))
        .collect();
    // `COURIER_BENCH_WORKERS=1`: one worker thread, whose instruction
    // counts repeat from run to run (scripts/instructions.sh).
    let workers = courier_testkit::bench::env_or(
        "COURIER_BENCH_WORKERS",
        std::thread::available_parallelism().map_or(2, usize::from),
    )
    .max(1);
    let rt = multi_thread(workers);
    let mut report = Report::new(format!(
        "runtime overhead on courier-memory: {messages} messages, no-op handler, {workers} worker \
         threads, raw = bare subscribe+ack loop, median of {round_count} interleaved rounds"
    ));
    rt.block_on(async {
        // Warm up allocator and scheduler.
        let _ = bare(messages.min(20_000), 1, false).await;
        let _ = through_runtime(messages.min(20_000), 16, true).await;
        for (concurrency, keyed) in [(1, false), (8, false), (16, true)] {
            if !only.is_empty() && !only.contains(&concurrency) {
                continue;
            }
            let case = if keyed {
                format!("runtime c={concurrency} keys={KEYS}")
            } else {
                format!("runtime c={concurrency}")
            };
            let per_cpu = RefCell::new(Rounds::default());
            let rounds = interleaved(round_count, |side| {
                let per_cpu = &per_cpu;
                async move {
                    let took = match side {
                        Side::Raw => bare(messages, concurrency, keyed).await,
                        Side::Courier => through_runtime(messages, concurrency, keyed).await,
                    };
                    let mut per_cpu = per_cpu.borrow_mut();
                    match side {
                        Side::Raw => per_cpu.raw.push(rate(messages, took.cpu)),
                        Side::Courier => per_cpu.courier.push(rate(messages, took.cpu)),
                    }
                    rate(messages, took.wall)
                }
            })
            .await;
            let per_cpu = per_cpu.into_inner();
            // Throughput ratio below 1: the overhead is its inverse minus 1.
            println!(
                "{case}: overhead {:+.1} % ({:.0} ns a message)",
                (1.0 / rounds.ratio() - 1.0) * 100.0,
                (1.0 / rounds.courier_median() - 1.0 / rounds.raw_median()) * 1e9
            );
            println!(
                "{case}, CPU time: overhead {:+.1} % ({:.0} ns a message)",
                (1.0 / per_cpu.ratio() - 1.0) * 100.0,
                (1.0 / per_cpu.courier_median() - 1.0 / per_cpu.raw_median()) * 1e9
            );
            report.push(Row::new(
                "memory",
                &case,
                PAYLOAD.len(),
                Unit::MessagesPerSecond,
                &rounds,
            ));
            report.push(Row::new(
                "memory",
                format!("{case} cpu"),
                PAYLOAD.len(),
                Unit::MessagesPerSecond,
                &per_cpu,
            ));
        }
    });
    report.finish();
}
