//! What the consumer runtime costs over a bare subscribe-and-ack loop, on
//! the in-process broker, in one run.
//!
//! ```text
//! cargo bench -p courier-memory --bench runtime_overhead            # 200,000 messages
//! cargo bench -p courier-memory --bench runtime_overhead -- 1000000 # or any count
//! cargo bench -p courier-memory --bench runtime_overhead -- c1       # concurrency 1 only
//! ```
//!
//! Each scenario consumes the same number of 64-byte messages that were
//! published before the clock starts; the handler does nothing. The bare
//! loop uses the prefetch the runtime would choose for the compared
//! concurrency, so both see the same broker behaviour. Each figure is the
//! best of several rounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_core::runtime::{self, Consumer, RetryPolicy};
use courier_core::{Broker, Message, Subscription};
use courier_memory::{MemoryBroker, MemoryConfig};
use futures::StreamExt;
use tokio::sync::Notify;

const ROUNDS: usize = 3;
const PAYLOAD: [u8; 64] = [0x2a; 64];
const KEYS: usize = 16;

#[derive(Debug, Clone, Copy)]
enum Scenario {
    Bare { prefetch: u16, keyed: bool },
    Runtime { concurrency: usize, keyed: bool },
}

impl Scenario {
    fn prefetch(concurrency: usize) -> u16 {
        u16::try_from(concurrency * 2)
            .unwrap_or(u16::MAX)
            .max(runtime::MIN_PREFETCH)
    }
}

async fn loaded_broker(messages: usize, keyed: bool) -> (Broker, Subscription) {
    let broker = MemoryBroker::with_config(MemoryConfig::default().retention(0)).into_broker();
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

/// Consumes `messages` and returns how long it took.
async fn consume(scenario: Scenario, messages: usize) -> Duration {
    let keyed = matches!(
        scenario,
        Scenario::Runtime { keyed: true, .. } | Scenario::Bare { keyed: true, .. }
    );
    let (broker, sub) = loaded_broker(messages, keyed).await;
    match scenario {
        Scenario::Bare { prefetch, .. } => {
            let start = Instant::now();
            let task = tokio::spawn(async move {
                let mut stream = broker.subscribe(sub.prefetch(prefetch)).await.unwrap();
                for _ in 0..messages {
                    let delivery = stream.next().await.expect("open").expect("delivery");
                    delivery.ack().await.expect("ack");
                }
            });
            task.await.expect("bare loop");
            start.elapsed()
        }
        Scenario::Runtime { concurrency, .. } => {
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
            let consumer = Consumer::builder(&broker, sub, handler)
                .concurrency(concurrency)
                .retry(RetryPolicy::none())
                .build();
            let metrics = consumer.metrics();
            let shutdown = consumer.shutdown_handle();
            let start = Instant::now();
            let task = tokio::spawn(consumer.run());
            last.notified().await;
            // The last ack follows the last handler call closely.
            while metrics.snapshot().handled < messages as u64 {
                tokio::task::yield_now().await;
            }
            let elapsed = start.elapsed();
            shutdown.shutdown();
            task.await.expect("consumer task").expect("consumer");
            elapsed
        }
    }
}

async fn best_of(scenario: Scenario, messages: usize) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        best = best.min(consume(scenario, messages).await);
    }
    best
}

fn rate(messages: usize, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64()
}

fn main() {
    let messages: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse().ok())
        .unwrap_or(200_000);
    // Any other argument picks the concurrencies to run (`-- 1 8` style
    // numbers are message counts, so concurrencies are given as `c1`, `c8`, `c16`).
    let only: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.strip_prefix('c').and_then(|c| c.parse().ok()))
        .collect();
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "runtime overhead on courier-memory: {messages} messages of {} bytes, no-op handler, \
         {workers} worker threads, best of {ROUNDS}",
        PAYLOAD.len()
    );
    println!(
        "{:<40} {:>10} {:>12} {:>9} {:>12}",
        "scenario", "time", "msg/s", "vs bare", "ns/msg added"
    );
    rt.block_on(async {
        // Warm up allocator and scheduler.
        consume(
            Scenario::Bare {
                prefetch: 16,
                keyed: false,
            },
            messages.min(20_000),
        )
        .await;
        for (concurrency, keyed) in [(1, false), (8, false), (16, true)] {
            if !only.is_empty() && !only.contains(&concurrency) {
                continue;
            }
            let prefetch = Scenario::prefetch(concurrency);
            let bare = best_of(Scenario::Bare { prefetch, keyed }, messages).await;
            let run = best_of(Scenario::Runtime { concurrency, keyed }, messages).await;
            println!(
                "{:<40} {:>8.1}ms {:>12.0} {:>9}",
                format!(
                    "bare subscribe+ack, prefetch {prefetch}{}",
                    if keyed { ", keyed" } else { "" }
                ),
                bare.as_secs_f64() * 1e3,
                rate(messages, bare),
                "-"
            );
            println!(
                "{:<40} {:>8.1}ms {:>12.0} {:>+8.1}% {:>12.0}",
                format!(
                    "Consumer, concurrency {concurrency}{}",
                    if keyed { ", 16 keys" } else { "" }
                ),
                run.as_secs_f64() * 1e3,
                rate(messages, run),
                (run.as_secs_f64() / bare.as_secs_f64() - 1.0) * 100.0,
                (run.as_secs_f64() - bare.as_secs_f64()) * 1e9 / messages as f64
            );
        }
    });
}
