//! What courier's telemetry (spans, trace context, metrics) costs per
//! message on the in-process broker when nobody listens, in one run.
//!
//! ```text
//! cargo bench -p courier-memory --bench telemetry_overhead             # 100,000 messages, 7 rounds
//! cargo bench -p courier-memory --bench telemetry_overhead -- 400000   # or any count
//! cargo bench -p courier-memory --bench telemetry_overhead -- nosub    # without the subscriber cases
//! ```
//!
//! A round publishes the messages one at a time, then a consumer runtime
//! (concurrency 8, no-op raw handler) consumes them; the figure is
//! messages per second over both. The raw side runs with telemetry off
//! ([`courier_core::telemetry::set_enabled`]): no span is created, no
//! trace context read or written, no metric touched. No metrics recorder
//! is installed on either side.
//!
//! What "off" is compared with, per case:
//!
//! - `tracing no-subscriber`: telemetry on, no `tracing` subscriber. The
//!   messages carry a `traceparent` already on both sides (as messages from
//!   a traced upstream service do), so both sides move the same bytes and
//!   the difference is the telemetry work alone: spans, reading the trace
//!   context and running the handler in it.
//! - `tracing dropping-subscriber`: the same with a subscriber that drops
//!   courier's spans (a `tracing_subscriber::Registry` filtered at `WARN`,
//!   as a service that wants warnings but no spans runs; courier's spans
//!   are at `INFO`), scoped to the round.
//! - `tracing registry-subscriber`: the same with a bare
//!   `tracing_subscriber::Registry`: it enables every span, so the spans
//!   are really created, entered and closed, and then nothing reads them.
//! - `publish in trace`: telemetry on, no subscriber, the messages carry
//!   no `traceparent` and are published inside a trace
//!   ([`TraceContext::scope`]): each publish writes one into the message,
//!   which is then carried, cloned and read with it. That header is work
//!   telemetry off does not do at all.
//!
//! Each case has a second row, `<case> cpu`: messages per second of the
//! process's CPU time (the round's thread does all the work), which a busy machine moves far less than
//! wall-clock rates.
//!
//! Once a scoped subscriber has existed, `tracing` asks the current
//! dispatcher at every span site instead of remembering that nobody
//! listens, so the no-subscriber cases cost a little more in a run that
//! also has the subscriber cases; `nosub` runs without them.
//!
//! Each round runs on a current-thread runtime of its own, so the scoped
//! subscriber sees every task.

use std::time::Instant;

use courier_core::runtime::{Consumer, RetryPolicy};
use courier_core::telemetry::{TRACEPARENT, TraceContext};
use courier_core::{Message, Subscription, telemetry};
use courier_memory::MemoryBroker;
use courier_testkit::bench::{Report, Rounds, Row, Side, Unit, interleaved, rate};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

mod common;

use common::{Counting, cpu_used, message_count};

const PAYLOAD: [u8; 64] = [0x2a; 64];
const UPSTREAM: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    NoSubscriber,
    DroppingSubscriber,
    RegistrySubscriber,
    PublishInTrace,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::NoSubscriber => "tracing no-subscriber",
            Case::DroppingSubscriber => "tracing dropping-subscriber",
            Case::RegistrySubscriber => "tracing registry-subscriber",
            Case::PublishInTrace => "publish in trace",
        }
    }
}

/// Publishes and consumes `messages`; returns messages per second of
/// wall-clock time and of CPU time.
fn run(case: Case, side: Side, messages: usize) -> (f64, f64) {
    telemetry::set_enabled(side == Side::Courier);
    let _subscriber = match (side, case) {
        (Side::Courier, Case::DroppingSubscriber) => Some(tracing::subscriber::set_default(
            tracing_subscriber::registry().with(LevelFilter::WARN),
        )),
        (Side::Courier, Case::RegistrySubscriber) => Some(tracing::subscriber::set_default(
            tracing_subscriber::registry(),
        )),
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let broker = MemoryBroker::with_config(common::bench_config()).into_broker();
        let sub = Subscription::new("bench", "bench");
        broker.provision(&sub).await.expect("provision");
        let cpu = cpu_used();
        let started = Instant::now();
        let publish = async {
            for _ in 0..messages {
                let message = Message::new(&PAYLOAD[..]);
                let message = if case == Case::PublishInTrace {
                    message
                } else {
                    message.with_header(TRACEPARENT, UPSTREAM).expect("header")
                };
                broker.publish("bench", message).await.expect("publish");
            }
        };
        if case == Case::PublishInTrace {
            TraceContext::new_root().scope(publish).await;
        } else {
            publish.await;
        }

        let (counting, handler) = Counting::handler(messages);
        let consumer = Consumer::builder(&broker, sub, handler)
            .concurrency(8)
            .retry(RetryPolicy::none())
            .build();
        let metrics = consumer.metrics();
        let shutdown = consumer.shutdown_handle();
        let task = tokio::spawn(consumer.run());
        counting.last.notified().await;
        while metrics.snapshot().handled < messages as u64 {
            tokio::task::yield_now().await;
        }
        let elapsed = started.elapsed();
        let cpu = cpu_used() - cpu;
        shutdown.shutdown();
        task.await.expect("consumer task").expect("consumer");
        (rate(messages, elapsed), rate(messages, cpu))
    })
}

fn main() {
    let round_count = courier_testkit::bench::env_or(courier_testkit::bench::ROUNDS_ENV, 7).max(1);
    let messages = message_count(100_000);
    let cases: &[Case] = if std::env::args().any(|a| a == "nosub") {
        &[Case::NoSubscriber, Case::PublishInTrace]
    } else {
        &[
            Case::NoSubscriber,
            Case::PublishInTrace,
            Case::DroppingSubscriber,
            Case::RegistrySubscriber,
        ]
    };
    let mut report = Report::new(format!(
        "telemetry overhead on courier-memory: {messages} messages of {} bytes published one at \
         a time and consumed by the runtime (concurrency 8, no-op handler), current-thread \
         runtime, raw = telemetry off, courier = telemetry on, median of {round_count} interleaved \
         rounds",
        PAYLOAD.len()
    ));
    // Warm-up: allocator, callsite registration.
    for &case in cases {
        run(case, Side::Raw, messages.min(10_000));
        run(case, Side::Courier, messages.min(10_000));
    }
    let driver = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for &case in cases {
        // Each round builds a runtime of its own: drive the rounds from
        // outside any runtime.
        let mut per_cpu = Rounds::default();
        let rounds = driver.block_on(interleaved(round_count, |side| {
            let (wall, cpu) = std::thread::scope(|s| {
                s.spawn(|| run(case, side, messages)).join().expect("round")
            });
            match side {
                Side::Raw => per_cpu.raw.push(cpu),
                Side::Courier => per_cpu.courier.push(cpu),
            }
            std::future::ready(wall)
        }));
        println!(
            "{}: overhead {:+.1} % ({:.0} ns a message)",
            case.label(),
            (1.0 / rounds.ratio() - 1.0) * 100.0,
            (1.0 / rounds.courier_median() - 1.0 / rounds.raw_median()) * 1e9
        );
        println!(
            "{}, CPU time: overhead {:+.1} % ({:.0} ns a message)",
            case.label(),
            (1.0 / per_cpu.ratio() - 1.0) * 100.0,
            (1.0 / per_cpu.courier_median() - 1.0 / per_cpu.raw_median()) * 1e9
        );
        report.push(Row::new(
            "memory",
            case.label(),
            PAYLOAD.len(),
            Unit::MessagesPerSecond,
            &rounds,
        ));
        report.push(Row::new(
            "memory",
            format!("{} cpu", case.label()),
            PAYLOAD.len(),
            Unit::MessagesPerSecond,
            &per_cpu,
        ));
    }
    telemetry::set_enabled(true);
    report.finish();
}
