//! courier-nats against raw async-nats on the same server, in one run:
//! JetStream confirmed publish, then consume with confirmed acks.
//!
//! `cargo bench -p courier-nats --bench throughput` (starts its own NATS
//! container; `COURIER_TEST_NATS_URL` uses a running server instead).
//! `-- ROUNDS` (or `COURIER_BENCH_ROUNDS`) sets the rounds per case (default 5), any other argument
//! runs only the cases whose name contains it; the sides alternate who
//! goes first and the medians of the rounds are compared.
//!
//! Cases, each side doing the same work with the same guarantees:
//!
//! - `publish confirmed`: 256 publishes in flight, every JetStream publish
//!   ack awaited; raw sends the same `Nats-Msg-Id` header courier does.
//!   Run with 64 B and 16 KiB payloads.
//! - `confirmed / core ingest`: the same broker's unconfirmed ingest rate as
//!   the raw side (core NATS publishes with a `Nats-Msg-Id` to the stream's
//!   subject, timed until the stream holds them all) against courier's
//!   confirmed publish; the ratio is what confirmation costs.
//!
//! `COURIER_BENCH_MESSAGES` sets the messages per publish round for 64 B
//! payloads (default 30 000; 16 KiB rounds publish a sixth of it),
//! `COURIER_BENCH_WINDOW` the publishes in flight (default 256).
//! - `consume c=N`: a pull stream read with N acks in flight, each ack
//!   confirmed by the server (raw: `consumer.messages()` and `double_ack`;
//!   courier: the delivery stream and `Delivery::ack`).
//! - `runtime c=N`: courier's consumer runtime (an empty handler) at
//!   concurrency N against the same raw loop.
//! - `consume c=N: first message after start` (and `runtime c=N: …`): from
//!   creating the consumer (raw: `get_stream` and `get_or_create_consumer`;
//!   courier: `subscribe`, or starting the runtime) to its first message,
//!   in the same runs. The rate rows above are timed from the first message
//!   to the last on both sides, so that this one-time cost is not spread
//!   over a run's messages.

use std::cell::RefCell;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use courier_core::prelude::*;
use courier_core::runtime::{self, Consumer};
use courier_core::{Message, Publisher, StartPosition, Subscriber, Subscription};
use courier_nats::NatsBroker;
use courier_testkit::bench::{Report, Rounds, Row, Side, Unit, interleaved, rate};
use futures::StreamExt;

const PAYLOAD: [u8; 64] = [7; 64];
/// The large payload the publish cases also run with.
const LARGE_PAYLOAD: [u8; 16 * 1024] = [7; 16 * 1024];
/// Publishes in flight (one batch on courier's side): 256, or
/// `COURIER_BENCH_WINDOW`.
static WINDOW: std::sync::LazyLock<usize> =
    std::sync::LazyLock::new(|| courier_testkit::bench::env_or("COURIER_BENCH_WINDOW", 256));
/// What a consumer pulls at a time on both sides (async-nats's default
/// batch is 200).
const PULL_BATCH: usize = 200;

fn main() {
    let rounds = courier_testkit::bench::rounds(5);
    let cases = courier_testkit::bench::Cases::from_args();
    let wanted = move |case: &str| cases.wanted(case);
    let runtime = courier_testkit::bench::runtime();
    runtime.block_on(async move {
        let server = courier_testkit::fixtures::nats().await.expect("nats fixture");
        let url = server.url().to_owned();
        let mut report = Report::new(format!(
            "NATS JetStream throughput, {} B payloads (publish: also 16 KiB), file storage, {rounds} rounds, 2 worker threads",
            PAYLOAD.len()
        ));
        let raw = async_nats::connect(&url).await.expect("connect");
        let js = jetstream::new(raw.clone());
        let courier = NatsBroker::connect(&url).await.expect("connect");

        let published = courier_testkit::bench::env_or("COURIER_BENCH_MESSAGES", 30_000);
        for payload in [&PAYLOAD[..], &LARGE_PAYLOAD[..]] {
            let payload = bytes::Bytes::from_static(payload);
            let count = match payload.len() {
                64 => published,
                _ => published / 6,
            };
            let raw_topic = topic("raw-pub");
            create_stream(&js, &raw_topic).await;
            let courier_topic = topic("courier-pub");
            Publisher::publish(&courier, &courier_topic, Message::new("warm-up"))
                .await
                .expect("stream");
            // The raw side: confirmed publishes, or the broker's core ingest.
            for (case, core) in [("publish confirmed", false), ("confirmed / core ingest", true)] {
                if !wanted(case) {
                    continue;
                }
                let rounds_of = interleaved(rounds, |side| {
                    let (raw, js, courier, payload) =
                        (raw.clone(), js.clone(), courier.clone(), payload.clone());
                    let (raw_topic, courier_topic) = (raw_topic.clone(), courier_topic.clone());
                    async move {
                        match (side, core) {
                            (Side::Raw, false) => {
                                raw_publish(&js, &raw_topic, &payload, count).await
                            }
                            (Side::Raw, true) => {
                                core_ingest(&raw, &js, &raw_topic, &payload, count).await
                            }
                            (Side::Courier, _) => {
                                courier_publish(&courier, &courier_topic, &payload, count).await
                            }
                        }
                    }
                })
                .await;
                report.push(Row::new(
                    "nats",
                    case,
                    payload.len(),
                    Unit::MessagesPerSecond,
                    &rounds_of,
                ));
            }
        }

        for (concurrency, count) in [(1, 2_000), (16, 10_000)] {
            for through_runtime in [false, true] {
                let case = match through_runtime {
                    false => format!("consume c={concurrency}"),
                    true => format!("runtime c={concurrency}"),
                };
                if !wanted(&case) {
                    continue;
                }
                let starts = RefCell::new(Rounds::default());
                let rounds_of = interleaved(rounds, |side| {
                    let (js, courier) = (js.clone(), courier.clone());
                    let starts = &starts;
                    async move {
                        let topic = filled(&js, count).await;
                        let run = match (side, through_runtime) {
                            (Side::Raw, _) => raw_consume(&js, &topic, count, concurrency).await,
                            (Side::Courier, false) => {
                                courier_consume(&courier, &topic, count, concurrency).await
                            }
                            (Side::Courier, true) => {
                                courier_runtime(&courier, &topic, count, concurrency).await
                            }
                        };
                        let start = run.start.as_secs_f64() * 1e6;
                        match side {
                            Side::Raw => starts.borrow_mut().raw.push(start),
                            Side::Courier => starts.borrow_mut().courier.push(start),
                        }
                        run.per_second
                    }
                })
                .await;
                report.push(Row::new(
                    "nats",
                    &case,
                    PAYLOAD.len(),
                    Unit::MessagesPerSecond,
                    &rounds_of,
                ));
                report.push(Row::new(
                    "nats",
                    format!("{case}: first message after start"),
                    PAYLOAD.len(),
                    Unit::Micros,
                    &starts.into_inner(),
                ));
            }
        }
        report.finish();
        courier.close().await.expect("close");
    });
}

fn topic(kind: &str) -> String {
    courier_testkit::fixtures::unique_name(&format!("bench-{kind}"))
}

/// The stream courier would create for `subject` (file storage, default
/// duplicate window).
async fn create_stream(js: &jetstream::Context, subject: &str) {
    js.get_or_create_stream(jetstream::stream::Config {
        name: courier_nats::stream_name(subject),
        subjects: vec![subject.to_owned()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("stream");
}

/// The headers the raw side sends: the same `Nats-Msg-Id` courier does.
fn raw_headers() -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", courier_core::MessageId::new().to_string());
    headers
}

/// Publishes `count` messages with `WINDOW` in flight; messages per second.
async fn raw_publish(
    js: &jetstream::Context,
    subject: &str,
    payload: &bytes::Bytes,
    count: usize,
) -> f64 {
    let started = Instant::now();
    let mut pending = Vec::with_capacity(*WINDOW);
    for _ in 0..count.div_ceil(*WINDOW) {
        for _ in 0..*WINDOW {
            let ack = js
                .publish_with_headers(subject.to_owned(), raw_headers(), payload.clone())
                .await
                .expect("publish");
            pending.push(ack.into_future());
        }
        for ack in futures::future::join_all(pending.drain(..)).await {
            ack.expect("publish ack");
        }
    }
    rate(count.div_ceil(*WINDOW) * *WINDOW, started.elapsed())
}

/// Core NATS publishes of `count` messages to the stream's subject, timed
/// until the stream holds them all: the broker's unconfirmed ingest rate.
async fn core_ingest(
    client: &async_nats::Client,
    js: &jetstream::Context,
    subject: &str,
    payload: &bytes::Bytes,
    count: usize,
) -> f64 {
    let mut stream = js
        .get_stream(courier_nats::stream_name(subject))
        .await
        .expect("stream");
    let before = stream.info().await.expect("stream info").state.messages;
    let target = before + count as u64;
    let started = Instant::now();
    for _ in 0..count {
        client
            .publish_with_headers(subject.to_owned(), raw_headers(), payload.clone())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    let deadline = started + Duration::from_secs(120);
    loop {
        let stored = stream.info().await.expect("stream info").state.messages;
        if stored >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream holds {} of {count} core publishes",
            stored - before
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    rate(count, started.elapsed())
}

async fn courier_publish(
    broker: &NatsBroker,
    topic: &str,
    payload: &bytes::Bytes,
    count: usize,
) -> f64 {
    let started = Instant::now();
    for _ in 0..count.div_ceil(*WINDOW) {
        let batch = (0..*WINDOW)
            .map(|_| Message::new(payload.clone()))
            .collect();
        Publisher::publish_batch(broker, topic, batch)
            .await
            .expect("publish");
    }
    rate(count.div_ceil(*WINDOW) * *WINDOW, started.elapsed())
}

/// A fresh topic holding `count` messages, and the durable consumer both
/// sides read it through (as courier provisions it).
async fn filled(js: &jetstream::Context, count: usize) -> String {
    let subject = topic("consume");
    create_stream(js, &subject).await;
    let mut pending = Vec::with_capacity(1000);
    for _ in 0..count.div_ceil(1000) {
        for _ in 0..1000 {
            let ack = js
                .publish(subject.clone(), bytes::Bytes::from_static(&PAYLOAD))
                .await
                .expect("publish");
            pending.push(ack.into_future());
        }
        for ack in futures::future::join_all(pending.drain(..)).await {
            ack.expect("publish ack");
        }
    }
    subject
}

/// async-nats's idiom: `consumer.messages()` with `concurrency` confirmed
/// acks (`double_ack`) in flight.
async fn raw_consume(
    js: &jetstream::Context,
    subject: &str,
    count: usize,
    concurrency: usize,
) -> Consumed {
    let clock = Clock::start();
    let stream = js
        .get_stream(courier_nats::stream_name(subject))
        .await
        .expect("stream");
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            "raw",
            jetstream::consumer::pull::Config {
                durable_name: Some("raw".to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await
        .expect("consumer");
    let messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .messages()
        .await
        .expect("messages");
    messages
        .take(count)
        .for_each_concurrent(concurrency, |message| {
            clock.received();
            async move {
                message.expect("message").double_ack().await.expect("ack");
            }
        })
        .await;
    clock.stop(count)
}

/// The delivery stream with `concurrency` acks in flight.
async fn courier_consume(
    broker: &NatsBroker,
    topic: &str,
    count: usize,
    concurrency: usize,
) -> Consumed {
    let sub = Subscription::new(topic, "courier")
        .start_from(StartPosition::Earliest)
        .prefetch(PULL_BATCH as u16);
    let clock = Clock::start();
    let stream = Subscriber::subscribe(broker, sub).await.expect("subscribe");
    stream
        .take(count)
        .for_each_concurrent(concurrency, |delivery| {
            clock.received();
            async move {
                delivery.expect("delivery").ack().await.expect("ack");
            }
        })
        .await;
    clock.stop(count)
}

/// courier's consumer runtime with an empty handler at `concurrency`
/// (its default prefetch), until it has handled and acked `count`.
async fn courier_runtime(
    broker: &NatsBroker,
    topic: &str,
    count: usize,
    concurrency: usize,
) -> Consumed {
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let clock = Arc::new(Clock::start());
    let first = clock.clone();
    let handler = runtime::raw(move |_message: Message| {
        first.received();
        counter.fetch_add(1, Ordering::Relaxed);
        async { Ok(()) }
    });
    let sub = Subscription::new(topic, "courier").start_from(StartPosition::Earliest);
    let running = Consumer::builder(broker.clone().into_broker(), sub, handler)
        .concurrency(concurrency)
        .start()
        .await
        .expect("consumer");
    let metrics = running.metrics();
    while metrics.snapshot().handled < count as u64 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let consumed = clock.stop(count);
    running.shutdown().await.expect("shutdown");
    assert_eq!(handled.load(Ordering::Relaxed), count);
    consumed
}

/// One consume run: its rate from the first message to the last, and how
/// long the first message took to come.
struct Consumed {
    per_second: f64,
    start: Duration,
}

/// The clock of a consume run: started before the consumer is created,
/// read at the first message and at the end.
struct Clock {
    started: Instant,
    first: OnceLock<Instant>,
}

impl Clock {
    fn start() -> Self {
        Clock {
            started: Instant::now(),
            first: OnceLock::new(),
        }
    }

    /// Called for every message; the first one's time is kept.
    fn received(&self) {
        self.first.get_or_init(Instant::now);
    }

    /// The run, now that its `count` messages are handled: the rate of the
    /// `count - 1` after the first.
    fn stop(&self, count: usize) -> Consumed {
        let first = *self.first.get().expect("no message was received");
        Consumed {
            per_second: rate(count - 1, first.elapsed()),
            start: first - self.started,
        }
    }
}
