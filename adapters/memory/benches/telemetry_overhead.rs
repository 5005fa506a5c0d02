//! What courier's telemetry (spans, trace context, metrics) costs per
//! message on the in-process broker when nobody listens, in one run.
//!
//! ```text
//! cargo bench -p courier-memory --bench telemetry_overhead             # 100,000 messages, 7 rounds
//! cargo bench -p courier-memory --bench telemetry_overhead -- 400000   # or any count
//! cargo bench -p courier-memory --bench telemetry_overhead -- nosub    # without the subscriber cases
//! cargo bench -p courier-memory --bench telemetry_overhead -- on 400000 # only the no-subscriber case's
//!                                                                       # telemetry-on side, for a profiler
//! ```
//!
//! `on` and `off` run only that side of `tracing no-subscriber` (seven
//! rounds, no table), so a profile shows what that side does:
//! `perf record -e cpu-clock -g <bench binary> --bench on 400000`.
//!
//! A round runs on a thread of its own with a current-thread runtime: a
//! consumer runtime (concurrency 8, no-op raw handler) is started, then
//! the messages are published one at a time in chunks of 1,000, each chunk
//! waited for until the consumer has acked all of it, so the broker's
//! queue never holds more than a chunk and the heap stays the same size
//! from round to round (a round that queued all its messages first spent
//! a fifth of its time growing the heap, and the first case of a run paid
//! for it). The clock runs over the chunks: publish, consume, ack.
//!
//! The raw side runs with telemetry off
//! ([`courier_core::telemetry::set_enabled`]): no span is created, no
//! trace context read or written, no metric touched. No metrics recorder
//! is installed on either side. Both sides run in every round, the raw
//! side first in even rounds and courier first in odd ones.
//!
//! What "off" is compared with, per case:
//!
//! - `tracing no-subscriber`: telemetry on, no `tracing` subscriber. The
//!   messages carry a `traceparent` already on both sides (as messages from
//!   a traced upstream service do), so both sides move the same bytes and
//!   the difference is the telemetry work alone: spans, reading the trace
//!   context and running the handler in it.
//! - `publish in trace`: telemetry on, no subscriber, the messages carry
//!   no `traceparent` and are published inside a trace
//!   ([`TraceContext::scope`]): each publish writes one into the message,
//!   which is then carried, cloned and read with it. That header is work
//!   telemetry off does not do at all.
//! - `tracing dropping-subscriber`: as `tracing no-subscriber` with a
//!   subscriber that drops courier's spans (a `tracing_subscriber::Registry`
//!   filtered at `WARN`, as a service that wants warnings but no spans
//!   runs; courier's spans are at `INFO`), scoped to the round.
//! - `tracing registry-subscriber`: the same with a bare
//!   `tracing_subscriber::Registry`: it enables every span, so the spans
//!   are really created, entered and closed, and then nothing reads them.
//!
//! Every case prints what telemetry adds per message, in wall-clock time
//! and in the round thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`; the round
//! thread does all the work), which a busy machine moves far less than
//! wall-clock time: the difference of the medians, the median of the
//! rounds' own differences (each round runs both sides back to back), and
//! courier's rate over raw's. The table has a `<case>` row (wall clock)
//! and a `<case> cpu` row per case.
//!
//! Once a scoped subscriber has existed, `tracing` asks the current
//! dispatcher at every span site instead of remembering that nobody
//! listens, for the rest of the process. So the no-subscriber cases run
//! (warm-up included) before any subscriber is made; `nosub` skips the
//! subscriber cases.

use std::time::Instant;

use courier_core::runtime::{Consumer, RetryPolicy};
use courier_core::telemetry::{TRACEPARENT, TraceContext};
use courier_core::{Message, Subscription, telemetry};
use courier_memory::MemoryBroker;
use courier_testkit::bench::{Report, Rounds, Row, Side, Unit, interleaved, median};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

mod common;

use common::{Counting, message_count, thread_cpu};

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

/// Messages published before waiting for the consumer to ack them.
const CHUNK: usize = 1_000;

/// Wall-clock and thread CPU nanoseconds per message of one round.
#[derive(Debug, Clone, Copy)]
struct PerMessage {
    wall: f64,
    cpu: f64,
}

/// Publishes and consumes `messages`; returns what each message took.
fn run(case: Case, side: Side, messages: usize) -> PerMessage {
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
        let (_counting, handler) = Counting::handler(messages);
        let consumer = Consumer::builder(&broker, sub, handler)
            .concurrency(8)
            .retry(RetryPolicy::none())
            .build();
        let metrics = consumer.metrics();
        let shutdown = consumer.shutdown_handle();
        let task = tokio::spawn(consumer.run());
        let trace = (case == Case::PublishInTrace).then(TraceContext::new_root);

        let cpu = thread_cpu();
        let started = Instant::now();
        let mut sent = 0;
        while sent < messages {
            let chunk = CHUNK.min(messages - sent);
            let publish = async {
                for _ in 0..chunk {
                    let message = Message::new(&PAYLOAD[..]);
                    let message = if case == Case::PublishInTrace {
                        message
                    } else {
                        message.with_header(TRACEPARENT, UPSTREAM).expect("header")
                    };
                    broker.publish("bench", message).await.expect("publish");
                }
            };
            match &trace {
                Some(trace) => trace.clone().scope(publish).await,
                None => publish.await,
            }
            sent += chunk;
            while metrics.snapshot().handled < sent as u64 {
                tokio::task::yield_now().await;
            }
        }
        let took = PerMessage {
            wall: started.elapsed().as_secs_f64() * 1e9 / messages as f64,
            cpu: (thread_cpu() - cpu).as_secs_f64() * 1e9 / messages as f64,
        };
        shutdown.shutdown();
        task.await.expect("consumer task").expect("consumer");
        took
    })
}

/// One round of `case` on a thread of its own (its runtime sees no other
/// work, and a scoped subscriber sees every task).
fn round(case: Case, side: Side, messages: usize) -> PerMessage {
    std::thread::scope(|s| s.spawn(|| run(case, side, messages)).join().expect("round"))
}

/// Runs `case` for `round_count` interleaved rounds, prints what telemetry
/// adds, and adds its rows to `report`.
fn measure(case: Case, round_count: usize, messages: usize, report: &mut Report) {
    // Warm-up: allocator, callsite registration.
    round(case, Side::Raw, messages.min(20_000));
    round(case, Side::Courier, messages.min(20_000));
    let mut wall = Rounds::default();
    let mut cpu = Rounds::default();
    let driver = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    driver.block_on(interleaved(round_count, |side| {
        let took = round(case, side, messages);
        let (wall, cpu) = match side {
            Side::Raw => (&mut wall.raw, &mut cpu.raw),
            Side::Courier => (&mut wall.courier, &mut cpu.courier),
        };
        // As rates, so the rows read like every other bench's.
        wall.push(1e9 / took.wall);
        cpu.push(1e9 / took.cpu);
        std::future::ready(0.0)
    }));
    for (clock, rounds) in [("wall", &wall), ("cpu ", &cpu)] {
        let nanos = |rates: &[f64]| rates.iter().map(|r| 1e9 / r).collect::<Vec<_>>();
        let (raw, courier) = (nanos(&rounds.raw), nanos(&rounds.courier));
        let paired: Vec<f64> = raw.iter().zip(&courier).map(|(r, c)| c - r).collect();
        println!(
            "{:<28} {clock}: off {:>6.0} ns/msg, on {:>6.0} ns/msg, added {:>+5.0} ns/msg \
             (median of round differences {:>+5.0}), on/off rate {:.3} ({:+.1} % cost)",
            case.label(),
            median(&raw),
            median(&courier),
            median(&courier) - median(&raw),
            median(&paired),
            rounds.ratio(),
            (1.0 / rounds.ratio() - 1.0) * 100.0,
        );
    }
    report.push(Row::new(
        "memory",
        case.label(),
        PAYLOAD.len(),
        Unit::MessagesPerSecond,
        &wall,
    ));
    report.push(Row::new(
        "memory",
        format!("{} cpu", case.label()),
        PAYLOAD.len(),
        Unit::MessagesPerSecond,
        &cpu,
    ));
}

fn main() {
    let only = std::env::args().find_map(|a| match a.as_str() {
        "on" => Some(Side::Courier),
        "off" => Some(Side::Raw),
        _ => None,
    });
    if let Some(side) = only {
        let messages = message_count(100_000);
        for _ in 0..7 {
            let took = round(Case::NoSubscriber, side, messages);
            println!(
                "{side:?}: {:.0} ns/msg wall, {:.0} ns/msg cpu",
                took.wall, took.cpu
            );
        }
        return;
    }
    let round_count = courier_testkit::bench::env_or(courier_testkit::bench::ROUNDS_ENV, 7).max(5);
    let messages = message_count(100_000);
    let mut cases = vec![Case::NoSubscriber, Case::PublishInTrace];
    if !std::env::args().any(|a| a == "nosub") {
        cases.extend([Case::DroppingSubscriber, Case::RegistrySubscriber]);
    }
    let mut report = Report::new(format!(
        "telemetry overhead on courier-memory: {messages} messages of {} bytes published one at \
         a time in chunks of {CHUNK} and consumed by the runtime (concurrency 8, no-op handler), \
         current-thread runtime, raw = telemetry off, courier = telemetry on, median of \
         {round_count} interleaved rounds",
        PAYLOAD.len()
    ));
    for case in cases {
        measure(case, round_count, messages, &mut report);
    }
    telemetry::set_enabled(true);
    report.finish();
}
