//! What courier's telemetry (spans, trace-context headers, metrics) costs
//! per message on the in-process broker, in one run: telemetry off
//! ([`courier_core::telemetry::set_enabled`]) against telemetry on with no
//! `tracing` subscriber, and on with a subscriber that drops every span
//! (a bare `tracing_subscriber::Registry`). No metrics recorder is
//! installed, so metrics go to the facade's no-op recorder.
//!
//! ```text
//! cargo bench -p courier-memory --bench telemetry_overhead              # 100,000 messages
//! cargo bench -p courier-memory --bench telemetry_overhead -- 400000    # or any count
//! cargo bench -p courier-memory --bench telemetry_overhead -- nosub     # without the subscriber scenario
//! ```
//!
//! Once a scoped subscriber has existed, `tracing` asks the current
//! dispatcher at every span site instead of remembering that nobody
//! listens, so "no subscriber" costs a little more in a run that also has
//! the subscriber scenario; `nosub` measures it alone.
//!
//! Each round runs every scenario once, in a rotated order (each scenario
//! goes first in some rounds), on a current-thread runtime so the scoped
//! subscriber sees every task. A scenario publishes the messages one at a
//! time inside a trace ([`TraceContext::scope`], as a service handling a
//! traced request would: a publish span and a `traceparent` written into
//! each), then a consumer runtime (concurrency 8, no-op handler) consumes
//! them (the `traceparent` read, a process span, the trace context scope
//! and an ack span each). The figures are medians over the rounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_core::runtime::{self, Consumer, RetryPolicy};
use courier_core::telemetry::TraceContext;
use courier_core::{Message, Subscription, telemetry};
use courier_memory::{MemoryBroker, MemoryConfig};
use tokio::sync::Notify;

const ROUNDS: usize = 7;
const PAYLOAD: [u8; 64] = [0x2a; 64];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Off,
    NoSubscriber,
    DroppingSubscriber,
}

impl Scenario {
    const ALL: [Scenario; 3] = [
        Scenario::Off,
        Scenario::NoSubscriber,
        Scenario::DroppingSubscriber,
    ];

    fn label(self) -> &'static str {
        match self {
            Scenario::Off => "telemetry off",
            Scenario::NoSubscriber => "on, no subscriber",
            Scenario::DroppingSubscriber => "on, subscriber dropping spans",
        }
    }
}

/// Publish and consume times of one scenario's run.
#[derive(Debug, Clone, Copy)]
struct Times {
    publish: Duration,
    consume: Duration,
}

fn run(scenario: Scenario, messages: usize) -> Times {
    telemetry::set_enabled(scenario != Scenario::Off);
    let _subscriber = (scenario == Scenario::DroppingSubscriber)
        .then(|| tracing::subscriber::set_default(tracing_subscriber::registry()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let broker = MemoryBroker::with_config(MemoryConfig::default().retention(0)).into_broker();
        let sub = Subscription::new("bench", "bench");
        broker.provision(&sub).await.expect("provision");
        let started = Instant::now();
        TraceContext::new_root()
            .scope(async {
                for _ in 0..messages {
                    broker
                        .publish("bench", Message::new(&PAYLOAD[..]))
                        .await
                        .expect("publish");
                }
            })
            .await;
        let publish = started.elapsed();

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
            .concurrency(8)
            .retry(RetryPolicy::none())
            .build();
        let metrics = consumer.metrics();
        let shutdown = consumer.shutdown_handle();
        let started = Instant::now();
        let task = tokio::spawn(consumer.run());
        last.notified().await;
        while metrics.snapshot().handled < messages as u64 {
            tokio::task::yield_now().await;
        }
        let consume = started.elapsed();
        shutdown.shutdown();
        task.await.expect("consumer task").expect("consumer");
        Times { publish, consume }
    })
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn per_message(d: Duration, messages: usize) -> f64 {
    d.as_secs_f64() * 1e9 / messages as f64
}

fn main() {
    let messages: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse().ok())
        .unwrap_or(100_000);
    println!(
        "telemetry overhead on courier-memory: {messages} messages of {} bytes, \
         published one at a time, consumed by the runtime (concurrency 8, no-op handler), \
         current-thread runtime, median of {ROUNDS} interleaved rounds",
        PAYLOAD.len()
    );
    let scenarios: &[Scenario] = if std::env::args().any(|a| a == "nosub") {
        &Scenario::ALL[..2]
    } else {
        &Scenario::ALL
    };
    // Warm-up: allocator, callsite registration.
    for &scenario in scenarios {
        run(scenario, messages.min(10_000));
    }
    let mut times: Vec<Vec<Times>> = vec![Vec::new(); scenarios.len()];
    for round in 0..ROUNDS {
        for offset in 0..scenarios.len() {
            let index = (round + offset) % scenarios.len();
            times[index].push(run(scenarios[index], messages));
        }
    }
    telemetry::set_enabled(true);
    let medians: Vec<(Duration, Duration)> = times
        .iter()
        .map(|t| {
            (
                median(t.iter().map(|t| t.publish).collect()),
                median(t.iter().map(|t| t.consume).collect()),
            )
        })
        .collect();
    let (off_publish, off_consume) = medians[0];
    let off_total = per_message(off_publish + off_consume, messages);
    println!(
        "{:<32} {:>12} {:>12} {:>12} {:>14} {:>9}",
        "scenario", "publish ns", "consume ns", "total ns", "added ns/msg", "vs off"
    );
    for (scenario, (publish, consume)) in scenarios.iter().zip(&medians) {
        let total = per_message(*publish + *consume, messages);
        println!(
            "{:<32} {:>12.0} {:>12.0} {:>12.0} {:>14.0} {:>+8.1}%",
            scenario.label(),
            per_message(*publish, messages),
            per_message(*consume, messages),
            total,
            total - off_total,
            (total / off_total - 1.0) * 100.0,
        );
    }
}
