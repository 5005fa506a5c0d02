//! Raw lapin against courier-amqp on the same RabbitMQ, in one run, with
//! [`courier_testkit::bench`]: every figure is the median of interleaved
//! rounds (the side going first alternates), with courier's ratio to raw.
//!
//! Cases, for payloads of 64 B and 16 KiB (persistent messages, durable
//! fanout exchange bound to a quorum queue on both sides):
//!
//! - `publish confirmed w=256`: raw lapin keeps 256 publisher confirms
//!   outstanding (a sliding window); courier runs 256 concurrent
//!   `publish` calls, so concurrent callers share one confirm channel.
//! - `confirmed / unconfirmed ingest`: raw is what the broker ingests
//!   without confirms (publish everything, then wait until the queue holds
//!   every message), courier is courier's confirmed publish above: how close
//!   confirmed publishing comes to the broker's unconfirmed ingest.
//! - `raw confirmed / unconfirmed`: the same for raw lapin's confirmed
//!   publish.
//! - `first 1000 publishes: new / known` (64 B): 1,000 concurrent courier
//!   publishes to a topic nobody published to yet (courier column) against
//!   the same burst to a topic already in use (raw column).
//! - `consume+ack p=256`: a lapin consume-and-ack loop against courier's
//!   delivery stream, both with prefetch 256.
//! - `runtime c=1`, `runtime c=16`: the lapin loop (prefetch 256) against
//!   the courier consumer runtime at that concurrency with its default
//!   prefetch (`COURIER_BENCH_PREFETCH=16,64,256` runs the runtime cases
//!   once per listed prefetch instead).
//! - `latency p50|p99|p999 @1000/s`: open loop at 1,000 messages a second,
//!   from when a message was due to when its consumer received it (publish
//!   with confirm, consume with ack on both sides).
//! - `latency … classic queue`: the same through a classic queue (courier
//!   connected with `queue_type=classic`). A quorum queue hands a message
//!   to its consumer only once a majority stored it; a classic queue does
//!   not wait for that, so the two settings show how much of the latency
//!   is the quorum queue's rather than the clients'.
//! - `latency … raw against raw`: the raw loop on both sides of the same
//!   interleaved rounds, for each queue type. Its ratio, which courier
//!   cannot move, is how far this machine and broker move a latency ratio
//!   between two runs of the same thing: a courier ratio inside it says
//!   nothing about courier.
//!
//! `cargo bench -p courier-amqp --bench throughput` starts the RabbitMQ
//! fixture (or uses `COURIER_TEST_RABBITMQ_URL`); words after `--` run only
//! the cases whose names contain one of them (`-- latency`: the latency
//! rows, `classic` only the classic queue's; `c=16` the runtime at
//! concurrency 16; `publish` the publish and ingest rows and the first
//! burst). Environment:
//! `COURIER_BENCH_ROUNDS` (default 5), `COURIER_BENCH_MESSAGES` (messages
//! of 64 B per run, default 20,000; 16 KiB runs use a quarter),
//! `COURIER_BENCH_LATENCY_MESSAGES` (default 2,000), `COURIER_BENCH_OUT`
//! (JSON-lines file the rows are appended to).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_amqp::AmqpBroker;
use courier_core::prelude::*;
use courier_core::{Message, Subscription};
use courier_testkit::bench::{
    Cases, Latencies, OpenLoop, Report, Rounds, Row, Side, Unit, env_or, interleaved, rate,
};
use courier_testkit::bench_runs::{
    Percentiles, RateClock, courier_open_loop, indexed_payload, payload_index, runtime_rate,
};
use courier_testkit::fixtures::unique_name;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

const ADAPTER: &str = "amqp";
/// Publisher confirms outstanding at once (raw window, courier callers).
const WINDOW: usize = 256;
/// Prefetch of the raw consumer and of courier's bare stream.
const PREFETCH: u16 = 256;
const LATENCY_RATE: u32 = 1_000;
/// Concurrent publishes of the first-use case.
const BURST: usize = 1_000;
const STALL: Duration = Duration::from_secs(60);

fn main() {
    let rounds = courier_testkit::bench::rounds(5);
    let messages = env_or("COURIER_BENCH_MESSAGES", 20_000);
    let latency_messages = env_or("COURIER_BENCH_LATENCY_MESSAGES", 2_000);
    let prefetches: Vec<Option<u16>> = std::env::var("COURIER_BENCH_PREFETCH")
        .ok()
        .map(|list| {
            list.split(',')
                .filter_map(|p| p.trim().parse().ok())
                .map(Some)
                .collect()
        })
        .unwrap_or_else(|| vec![None]);
    let cases = Cases::from_args();
    let runtime = courier_testkit::bench::runtime();
    runtime.block_on(async {
        let fixture = courier_testkit::fixtures::rabbitmq()
            .await
            .expect("RabbitMQ fixture");
        let url = fixture.url().to_owned();
        let raw = Raw::connect(&url).await;
        let courier = AmqpBroker::connect(&url).await.expect("courier connect");
        let separator = if url.contains('?') { '&' } else { '?' };
        let classic = AmqpBroker::connect(&format!("{url}{separator}queue_type=classic"))
            .await
            .expect("courier connect, classic queues");
        let bench = Bench {
            raw,
            courier,
            classic,
            rounds,
        };
        bench.warm_up(messages.min(5_000)).await;
        let mut report = Report::new(format!(
            "AMQP (RabbitMQ fixture), {messages} messages of 64 B / {} of 16 KiB per run, \
             latency {latency_messages} messages at {LATENCY_RATE}/s, median of {rounds} \
             interleaved rounds, 2 worker threads",
            messages / 4
        ));
        for payload in [64, 16 * 1024] {
            let count = if payload > 1024 {
                messages / 4
            } else {
                messages
            };
            if cases.wanted(&format!("publish confirmed w={WINDOW}")) {
                bench.publish(&mut report, payload, count).await;
            }
            if payload == 64 && cases.wanted(&format!("first {BURST} publishes")) {
                bench.first_burst(&mut report, payload).await;
            }
            if cases.wanted(&format!("consume+ack p={PREFETCH}")) {
                bench.consume(&mut report, payload, count).await;
            }
            for &prefetch in &prefetches {
                for concurrency in [1, 16] {
                    if cases.wanted(&format!("runtime c={concurrency}")) {
                        bench
                            .runtime(&mut report, payload, count, concurrency, prefetch)
                            .await;
                    }
                }
            }
            for queue in [Queue::Quorum, Queue::Classic] {
                if cases.wanted(&format!("latency @{LATENCY_RATE}/s{}", queue.suffix())) {
                    for against_itself in [false, true] {
                        bench
                            .latency(
                                &mut report,
                                payload,
                                latency_messages,
                                queue,
                                against_itself,
                            )
                            .await;
                    }
                }
            }
        }
        report.finish();
        bench.courier.close().await.expect("close");
        bench.classic.close().await.expect("close");
        let _ = bench.raw.connection.close(200, "done".into()).await;
    });
}

struct Bench {
    raw: Raw,
    courier: AmqpBroker,
    /// courier declaring classic group queues (the latency rows' second
    /// setting).
    classic: AmqpBroker,
    rounds: usize,
}

/// The type of the group queue a latency row goes through.
#[derive(Clone, Copy, PartialEq)]
enum Queue {
    Quorum,
    Classic,
}

impl Queue {
    fn suffix(self) -> &'static str {
        match self {
            Queue::Quorum => "",
            Queue::Classic => " classic queue",
        }
    }
}

/// A topic with its group queue, declared by courier's provisioning; the
/// raw side uses the same names.
struct Topic {
    topic: String,
    queue: String,
    subscription: Subscription,
}

impl Bench {
    async fn topic(&self, kind: &str) -> Topic {
        self.topic_on(&self.courier, kind).await
    }

    /// A topic and group queue declared by `courier`'s provisioning (so
    /// with its queue type).
    async fn topic_on(&self, courier: &AmqpBroker, kind: &str) -> Topic {
        let topic = unique_name(&format!("bench-{kind}"));
        let subscription = Subscription::new(&topic, "g").prefetch(PREFETCH);
        courier.provision(&subscription).await.expect("provision");
        Topic {
            queue: format!("{topic}:g"),
            topic,
            subscription,
        }
    }

    async fn warm_up(&self, count: usize) {
        let t = self.topic("warm").await;
        self.raw.publish_confirmed(&t.topic, 64, count).await;
        self.raw.consume(&t.queue, count).await;
        courier_publish(&self.courier, &t.topic, 64, count).await;
        courier_consume(&self.courier, t.subscription.clone(), count).await;
    }

    async fn publish(&self, report: &mut Report, payload: usize, count: usize) {
        let t = self.topic("publish").await;
        let mut unconfirmed = Vec::new();
        let mut raw_confirmed = Vec::new();
        let mut courier_confirmed = Vec::new();
        for round in 0..self.rounds {
            // Three measurements a round, each going first in turn.
            for which in 0..3 {
                self.raw.purge(&t.queue).await;
                match (which + round) % 3 {
                    0 => unconfirmed.push(
                        self.raw
                            .ingest_unconfirmed(&t.topic, &t.queue, payload, count)
                            .await,
                    ),
                    1 => raw_confirmed
                        .push(self.raw.publish_confirmed(&t.topic, payload, count).await),
                    _ => courier_confirmed
                        .push(courier_publish(&self.courier, &t.topic, payload, count).await),
                }
            }
        }
        self.raw.purge(&t.queue).await;
        let pair = |raw: &Vec<f64>, courier: &Vec<f64>| Rounds {
            raw: raw.clone(),
            courier: courier.clone(),
        };
        let rows = [
            (
                format!("publish confirmed w={WINDOW}"),
                &raw_confirmed,
                &courier_confirmed,
            ),
            (
                "confirmed / unconfirmed ingest".into(),
                &unconfirmed,
                &courier_confirmed,
            ),
            (
                "raw confirmed / unconfirmed".into(),
                &unconfirmed,
                &raw_confirmed,
            ),
        ];
        for (case, raw, courier) in rows {
            let rounds = pair(raw, courier);
            report.push(Row::new(
                ADAPTER,
                case,
                payload,
                Unit::MessagesPerSecond,
                &rounds,
            ));
        }
    }

    /// [`BURST`] concurrent publishes to a topic nobody published to yet
    /// (courier side) against the same burst to a topic already in use
    /// (raw side): what the first use of a topic costs.
    async fn first_burst(&self, report: &mut Report, payload: usize) {
        let known = self.topic("burst-known").await;
        courier_publish(&self.courier, &known.topic, payload, 1).await;
        let rounds = interleaved(self.rounds, |side| {
            let known = &known;
            async move {
                match side {
                    Side::Raw => burst(&self.courier, &known.topic, payload).await,
                    Side::Courier => {
                        let fresh = self.topic("burst-new").await;
                        burst(&self.courier, &fresh.topic, payload).await
                    }
                }
            }
        })
        .await;
        self.raw.purge(&known.queue).await;
        let case = format!("first {BURST} publishes: new / known");
        report.push(Row::new(
            ADAPTER,
            case,
            payload,
            Unit::MessagesPerSecond,
            &rounds,
        ));
    }

    async fn consume(&self, report: &mut Report, payload: usize, count: usize) {
        let case = format!("consume+ack p={PREFETCH}");
        self.drain(report, case, payload, count, None).await;
    }

    async fn runtime(
        &self,
        report: &mut Report,
        payload: usize,
        count: usize,
        concurrency: usize,
        prefetch: Option<u16>,
    ) {
        let case = match prefetch {
            Some(p) => format!("runtime c={concurrency} prefetch={p}"),
            None => format!("runtime c={concurrency}"),
        };
        let runtime = Some((concurrency, prefetch));
        self.drain(report, case, payload, count, runtime).await;
    }

    /// Fills a queue with `count` messages, then drains it: raw with the
    /// lapin loop; courier with its bare stream, or with the consumer
    /// runtime at `runtime` = (concurrency, prefetch).
    async fn drain(
        &self,
        report: &mut Report,
        case: String,
        payload: usize,
        count: usize,
        runtime: Option<(usize, Option<u16>)>,
    ) {
        let t = self.topic("drain").await;
        let rounds = interleaved(self.rounds, |side| {
            let t = &t;
            async move {
                courier_publish(&self.courier, &t.topic, payload, count).await;
                let sub = t.subscription.clone();
                match (side, runtime) {
                    (Side::Raw, _) => self.raw.consume(&t.queue, count).await,
                    (Side::Courier, None) => courier_consume(&self.courier, sub, count).await,
                    (Side::Courier, Some((concurrency, prefetch))) => {
                        let subscriber = Arc::new(self.courier.clone());
                        runtime_rate(
                            subscriber,
                            sub,
                            count,
                            concurrency,
                            prefetch,
                            STALL,
                            RateClock::FromStart,
                        )
                        .await
                    }
                }
            }
        })
        .await;
        let unit = Unit::MessagesPerSecond;
        report.push(Row::new(ADAPTER, case, payload, unit, &rounds));
    }

    /// The latency rows of `queue`; `against_itself`: the raw loop on
    /// both sides.
    async fn latency(
        &self,
        report: &mut Report,
        payload: usize,
        count: usize,
        queue: Queue,
        against_itself: bool,
    ) {
        let courier = match queue {
            Queue::Quorum => &self.courier,
            Queue::Classic => &self.classic,
        };
        let t = self.topic_on(courier, "latency").await;
        let percentiles = std::cell::RefCell::new(Percentiles::default());
        let _ = interleaved(self.rounds, |side| {
            let t = &t;
            let percentiles = &percentiles;
            async move {
                let mut latencies = match side {
                    Side::Courier if !against_itself => {
                        let sub = t.subscription.clone();
                        let mut stream = courier.subscribe(sub).await.expect("subscribe");
                        let (topic, rate) = (&t.topic, LATENCY_RATE);
                        courier_open_loop(courier, topic, &mut stream, payload, count, rate, STALL)
                            .await
                    }
                    _ => self.raw.latency(&t.topic, &t.queue, payload, count).await,
                };
                percentiles.borrow_mut().push(side, &mut latencies);
                0.0
            }
        })
        .await;
        let suffix = format!(
            "@{LATENCY_RATE}/s{}{}",
            queue.suffix(),
            courier_testkit::bench::against_itself(against_itself)
        );
        for row in percentiles.into_inner().rows(ADAPTER, &suffix, payload) {
            report.push(row);
        }
    }
}

/// The raw client, set up as courier-amqp sets itself up.
struct Raw {
    connection: Connection,
    confirmed: Channel,
    unconfirmed: Channel,
    consume: Channel,
}

fn properties() -> BasicProperties {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(courier_core::MessageId::new().to_string().into())
        .with_timestamp(now.as_secs())
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("raw connect");
        let confirmed = connection.create_channel().await.expect("channel");
        confirmed
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let unconfirmed = connection.create_channel().await.expect("channel");
        let consume = connection.create_channel().await.expect("channel");
        consume
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .expect("qos");
        Raw {
            connection,
            confirmed,
            unconfirmed,
            consume,
        }
    }

    async fn purge(&self, queue: &str) {
        self.unconfirmed
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .expect("purge");
    }

    async fn message_count(&self, queue: &str) -> u32 {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        self.unconfirmed
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .expect("passive declare")
            .message_count()
    }

    /// Publishes `count` messages without confirms, then waits until the
    /// queue holds them all: what the broker ingests when nobody waits.
    async fn ingest_unconfirmed(&self, topic: &str, queue: &str, size: usize, count: usize) -> f64 {
        let payload = indexed_payload(size, 0);
        let started = Instant::now();
        for _ in 0..count {
            self.unconfirmed
                .basic_publish(
                    topic.into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &payload,
                    properties(),
                )
                .await
                .expect("publish");
        }
        let deadline = Instant::now() + STALL;
        while (self.message_count(queue).await as usize) < count {
            assert!(Instant::now() < deadline, "unconfirmed ingest stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        rate(count, started.elapsed())
    }

    /// Publishes `count` messages with at most [`WINDOW`] confirms
    /// outstanding.
    async fn publish_confirmed(&self, topic: &str, size: usize, count: usize) -> f64 {
        let payload = indexed_payload(size, 0);
        let started = Instant::now();
        let mut outstanding = VecDeque::with_capacity(WINDOW);
        for _ in 0..count {
            if outstanding.len() == WINDOW {
                let confirm: lapin::PublisherConfirm = outstanding.pop_front().expect("full");
                assert!(confirm.await.expect("confirm").is_ack());
            }
            let confirm = self
                .confirmed
                .basic_publish(
                    topic.into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &payload,
                    properties(),
                )
                .await
                .expect("publish");
            outstanding.push_back(confirm);
        }
        for confirm in outstanding {
            assert!(confirm.await.expect("confirm").is_ack());
        }
        rate(count, started.elapsed())
    }

    /// Consumes and acks `count` messages.
    async fn consume(&self, queue: &str, count: usize) -> f64 {
        let tag = unique_name("raw");
        let started = Instant::now();
        let mut consumer = self
            .consume
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        for _ in 0..count {
            let delivery = tokio::time::timeout(STALL, consumer.next())
                .await
                .expect("raw consume stalled")
                .expect("open")
                .expect("delivery");
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
        }
        let elapsed = started.elapsed();
        self.consume
            .basic_cancel(tag.as_str().into(), Default::default())
            .await
            .expect("cancel");
        rate(count, elapsed)
    }

    /// Open-loop publish (with confirms) and consume of `count` messages.
    async fn latency(&self, topic: &str, queue: &str, size: usize, count: usize) -> Latencies {
        let tag = unique_name("raw-latency");
        let mut consumer = self
            .consume
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let schedule = OpenLoop::new(LATENCY_RATE);
        let publishing = async {
            let mut confirms = futures::stream::FuturesUnordered::new();
            for i in 0..count {
                tokio::select! {
                    () = schedule.wait_due(i) => {}
                    // Collect confirms while waiting for the next slot.
                    Some(confirm) = confirms.next(), if !confirms.is_empty() => {
                        let confirm: lapin::Result<lapin::Confirmation> = confirm;
                        assert!(confirm.expect("confirm").is_ack());
                        schedule.wait_due(i).await;
                    }
                }
                let confirm = self
                    .confirmed
                    .basic_publish(
                        topic.into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        &indexed_payload(size, i),
                        properties(),
                    )
                    .await
                    .expect("publish");
                confirms.push(confirm);
            }
            while let Some(confirm) = confirms.next().await {
                assert!(confirm.expect("confirm").is_ack());
            }
        };
        let consuming = async {
            let mut latencies = Latencies::with_capacity(count);
            for _ in 0..count {
                let delivery = tokio::time::timeout(STALL, consumer.next())
                    .await
                    .expect("raw latency consume stalled")
                    .expect("open")
                    .expect("delivery");
                latencies.record(schedule.due(payload_index(&delivery.data)), Instant::now());
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
            }
            latencies
        };
        let ((), latencies) = futures::join!(publishing, consuming);
        self.consume
            .basic_cancel(tag.as_str().into(), Default::default())
            .await
            .expect("cancel");
        latencies
    }
}

/// `count` concurrent-caller publishes, [`WINDOW`] at a time.
async fn courier_publish(broker: &AmqpBroker, topic: &str, size: usize, count: usize) -> f64 {
    let payload = bytes::Bytes::from(indexed_payload(size, 0));
    let started = Instant::now();
    let mut publishes = futures::stream::iter(0..count)
        .map(|_| broker.publish(topic, Message::new(payload.clone())))
        .buffer_unordered(WINDOW);
    while let Some(outcome) = publishes.next().await {
        outcome.expect("publish");
    }
    rate(count, started.elapsed())
}

/// [`BURST`] publishes, all started at once.
async fn burst(broker: &AmqpBroker, topic: &str, size: usize) -> f64 {
    let payload = bytes::Bytes::from(indexed_payload(size, 0));
    let started = Instant::now();
    let publishes = (0..BURST).map(|_| broker.publish(topic, Message::new(payload.clone())));
    for outcome in futures::future::join_all(publishes).await {
        outcome.expect("publish");
    }
    rate(BURST, started.elapsed())
}

async fn courier_consume(broker: &AmqpBroker, sub: Subscription, count: usize) -> f64 {
    let started = Instant::now();
    let mut stream = broker.subscribe(sub).await.expect("subscribe");
    for _ in 0..count {
        let delivery = tokio::time::timeout(STALL, stream.next())
            .await
            .expect("courier consume stalled")
            .expect("open")
            .expect("delivery");
        delivery.ack().await.expect("ack");
    }
    rate(count, started.elapsed())
}
