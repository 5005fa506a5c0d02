//! courier-kafka against raw rdkafka on the same broker, in one run, with
//! [`courier_testkit::bench`]: every figure is the median of interleaved
//! rounds (the side going first alternates), with courier's ratio to raw.
//!
//! Cases, for payloads of 64 B and 16 KiB:
//!
//! - `publish confirmed w=1000`: idempotent producer, `acks=all`, delivery
//!   reports awaited in windows of 1,000 (raw records carry the two
//!   headers courier writes for a plain message, id and timestamp, the
//!   like-for-like comparison on a broker whose cost grows with headers);
//!   courier publishes the same windows with `publish_batch`.
//! - `consume+commit`: a raw `StreamConsumer` storing each offset and
//!   auto-committing every 100 ms against courier's delivery stream, whose
//!   acks the commit watermark commits every 100 ms. Timed from subscribing
//!   (joining the group included, the same for both) to the last record.
//! - `consume+commit, raw reads headers`: the same, the raw loop also
//!   reading the id and timestamp headers of each record, as a consumer
//!   that needs to know its messages does (rdkafka parses a record's
//!   headers on first access; courier reads them for every record).
//!   Raw consumers are configured as courier's are where it matters:
//!   `fetch.queue.backoff.ms` 50 (rdkafka's default, 1 s, left a raw loop
//!   that reads headers idle for most of every second once rdkafka held
//!   100,000 fetched records: 166,721 msg/s against 610,255 with 50 ms on
//!   the mock cluster).
//! - `runtime c=1`, `runtime c=16`: the raw consumer against the courier
//!   consumer runtime at that concurrency with its default prefetch.
//! - `latency p50|p99|p999 @R/s`: open loop at `COURIER_BENCH_KAFKA_RATE`
//!   (default 1,000) messages a second, from when a message was due to
//!   when its consumer received it.
//! - `latency … raw against raw`: the raw loop on both sides of the same
//!   interleaved rounds. Its ratio, which courier cannot move, is how far
//!   this machine and broker move a latency ratio between two runs of the
//!   same thing: a courier ratio inside it says nothing about courier.
//!
//! `cargo bench -p courier-kafka --bench throughput` starts the Kafka
//! fixture container (`COURIER_TEST_KAFKA_URL` uses a running broker
//! instead). Environment: `COURIER_BENCH_ROUNDS` (default 5),
//! `COURIER_BENCH_KAFKA_MESSAGES` (64 B messages per run, default 5,000,
//! 200,000 on the mock cluster; 16 KiB runs use a quarter),
//! `COURIER_BENCH_LATENCY_MESSAGES` (default 2,000), `COURIER_BENCH_OUT`
//! (JSON-lines file the rows are appended to).
//! Words after `--` pick cases by a part of their name (`-- --mock
//! consume` runs the consume rows on the mock cluster only).
//!
//! The test broker is tansu 0.6, a Kafka-protocol broker storing in
//! SQLite: it is slow (a few thousand records a second at best), stalls
//! under load at times, and its cost dominates both sides, so these ratios
//! say little about the clients' own cost. `-- --mock` runs both sides
//! against librdkafka's in-process mock cluster instead, where the clients'
//! cost shows. On the mock, consumers fetch with a 5 ms wait (it does not
//! answer a waiting fetch when records arrive) and consume runs are timed
//! from their first record (a group's first assignment waits a fixed 3 s
//! there). The mock cluster cannot create topics through the admin
//! API, so every topic is created up front, with 32 partitions. Only the
//! 64 B rows run on the mock: its consumers stop receiving short of the end
//! of a topic of 16 KiB records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::prelude::*;
use courier_core::{Message, StartPosition, Subscription};
use courier_kafka::{KafkaBroker, KafkaConfig};
use courier_testkit::bench::{
    Cases, Latencies, OpenLoop, Report, Row, Side, Unit, env_or, interleaved, rate,
};
use courier_testkit::bench_runs::{
    Percentiles, RateClock, WARM_UP_INDEX, courier_open_loop, indexed_payload, payload_index,
    runtime_rate,
};
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

const ADAPTER: &str = "kafka";
/// courier's consumers get the raw consumers' session timeout (rdkafka's
/// default, 45 s): under load the test broker answers heartbeats more than
/// courier's default 10 s late, and a member whose session times out on it
/// may be left without partitions.
const SESSION: &str = "session_timeout=45s";
/// Records handed to the producer before their reports are awaited.
const WINDOW: usize = 1000;
/// A consume run that receives nothing for this long is reported stalled.
const STALL: Duration = Duration::from_secs(60);

fn main() {
    let rounds = courier_testkit::bench::rounds(5);
    let mock = std::env::args().any(|a| a == "--mock");
    // The mock cluster moves 5,000 records in ~10 ms, too short a run to
    // time: runs there are 40 times as long.
    let count = env_or(
        "COURIER_BENCH_KAFKA_MESSAGES",
        if mock { 200_000 } else { 5_000 },
    );
    let latency_count = env_or("COURIER_BENCH_LATENCY_MESSAGES", 2_000);
    let latency_rate = env_or("COURIER_BENCH_KAFKA_RATE", 1_000) as u32;
    let cases = Cases::from_args();
    let wanted = &|case: &str| cases.wanted(case);
    let runtime = courier_testkit::bench::runtime();
    runtime.block_on(async move {
        let (target, _server) = if mock {
            let cluster = MockCluster::new(1).expect("mock cluster");
            let bootstrap = cluster.bootstrap_servers();
            let target = Target {
                url: format!("kafka://{bootstrap}?{SESSION}&create_topics=false"),
                bootstrap,
                mock: Some(cluster),
                partitions: MOCK_PARTITIONS,
            };
            (target, None)
        } else {
            let server = courier_testkit::fixtures::kafka()
                .await
                .expect("kafka fixture");
            let target = Target {
                url: format!("{}?{SESSION}", server.url()),
                bootstrap: server.bootstrap_servers().to_owned(),
                mock: None,
                partitions: 1,
            };
            (target, Some(server))
        };
        let t = &target;
        let adapter = if mock { "kafka-mock" } else { ADAPTER };
        let mut report = Report::new(format!(
            "Kafka ({}), {count} messages of 64 B{} per run, latency \
             {latency_count} messages at {latency_rate}/s, median of {rounds} interleaved \
             rounds, 2 worker threads",
            if mock {
                "librdkafka mock cluster"
            } else {
                "tansu 0.6 test broker"
            },
            if mock {
                String::new()
            } else {
                format!(" / {} of 16 KiB", count / 4)
            }
        ));
        let unit = Unit::MessagesPerSecond;
        let payloads: &[usize] = if mock {
            // Consumers of the mock cluster (raw and courier alike) stop
            // receiving short of the end of a topic of 16 KiB records
            // (at 952-2,832 of 1,250-5,000 in every run tried).
            println!(
                "  kafka-mock: 16 KiB rows skipped: the mock cluster stops serving such topics"
            );
            &[64]
        } else {
            &[64, 16 * 1024]
        };
        for &payload in payloads {
            let n = if payload > 1024 { count / 4 } else { count };
            for (case, raw_reads_headers) in [
                ("consume+commit", false),
                ("consume+commit, raw reads headers", true),
            ] {
                if !wanted(case) {
                    continue;
                }
                let consume = interleaved(rounds, |side| async move {
                    let topic = filled(t, payload, n).await;
                    match side {
                        Side::Raw => raw_consume_reading(t, &topic, n, raw_reads_headers).await,
                        Side::Courier => courier_consume(t, &topic, n).await,
                    }
                })
                .await;
                report.push(Row::new(adapter, case, payload, unit, &consume));
            }
            for concurrency in [1, 16] {
                let case = format!("runtime c={concurrency}");
                if !wanted(&case) {
                    continue;
                }
                let rounds = interleaved(rounds, |side| async move {
                    let topic = filled(t, payload, n).await;
                    match side {
                        Side::Raw => raw_consume(t, &topic, n).await,
                        Side::Courier => runtime_consume(t, &topic, n, concurrency).await,
                    }
                })
                .await;
                report.push(Row::new(adapter, case, payload, unit, &rounds));
            }
            let case = format!("publish confirmed w={WINDOW}");
            if wanted(&case) {
                let publish = interleaved(rounds, |side| async move {
                    match side {
                        Side::Raw => raw_publish(t, payload, n).await,
                        Side::Courier => courier_publish(t, payload, n).await,
                    }
                })
                .await;
                report.push(Row::new(adapter, case, payload, unit, &publish));
            }
            if !wanted("latency") {
                continue;
            }
            for against_itself in [false, true] {
                let percentiles = std::cell::RefCell::new(Percentiles::default());
                let _ = interleaved(rounds, |side| {
                    let percentiles = &percentiles;
                    async move {
                        let mut latencies = match side {
                            Side::Courier if !against_itself => {
                                courier_latency(t, payload, latency_count, latency_rate).await
                            }
                            _ => raw_latency(t, payload, latency_count, latency_rate).await,
                        };
                        percentiles.borrow_mut().push(side, &mut latencies);
                        0.0
                    }
                })
                .await;
                let against = courier_testkit::bench::against_itself(against_itself);
                let suffix = format!("@{latency_rate}/s{against}");
                for row in percentiles.into_inner().rows(adapter, &suffix, payload) {
                    report.push(row);
                }
            }
        }
        report.finish();
    });
}

/// The broker both sides use.
struct Target {
    url: String,
    bootstrap: String,
    mock: Option<MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    partitions: i32,
}

/// Partitions of every topic on the mock cluster.
const MOCK_PARTITIONS: i32 = 32;

/// How long a consumer's fetch waits for records on the mock cluster,
/// which does not answer a waiting fetch when records arrive: left at
/// rdkafka's 500 ms, every latency is about half of that on both sides.
const MOCK_FETCH_WAIT: &str = "5";

impl Target {
    /// A courier broker for this target, with the mock's fetch wait.
    async fn connect(&self) -> KafkaBroker {
        let mut config = KafkaConfig::from_url(&self.url).expect("url");
        if self.mock.is_some() {
            config = config.rdkafka("fetch.wait.max.ms", MOCK_FETCH_WAIT);
        }
        KafkaBroker::connect_with(config).await.expect("connect")
    }

    /// Whether a consume run is timed from its first record rather than
    /// from subscribing: on the mock cluster a group's first join waits a
    /// fixed 3 s (its initial rebalance delay), which would make every
    /// consume rate there that delay and nothing else.
    fn time_from_first(&self) -> bool {
        self.mock.is_some()
    }

    /// A new topic name. On the mock cluster the topic and its companions
    /// (the topic courier's consumer writes settled offsets to, and the
    /// dead-letter topic the runtime checks at start) are created now.
    fn topic(&self, kind: &str) -> String {
        let name = courier_testkit::fixtures::unique_name(&format!("bench-{kind}"));
        if let Some(mock) = &self.mock {
            let companions = [format!("{name}.courier-settled"), format!("{name}.dlq")];
            for topic in std::iter::once(name.clone()).chain(companions) {
                mock.create_topic(&topic, self.partitions, 1)
                    .expect("create mock topic");
            }
        }
        name
    }
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()
        .expect("producer")
}

async fn create_topic(bootstrap: &str, name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    admin
        .create_topics(
            &[NewTopic::new(name, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic")
        .into_iter()
        .for_each(|r| {
            r.expect("topic created");
        });
}

/// A raw record carrying the headers courier writes for a plain message.
fn raw_record<'a>(topic: &'a str, payload: &'a [u8]) -> FutureRecord<'a, [u8], [u8]> {
    let id = courier_core::MessageId::new().to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        .to_string();
    FutureRecord::<[u8], [u8]>::to(topic)
        .payload(payload)
        .headers(
            OwnedHeaders::new()
                .insert(Header {
                    key: "courier-id",
                    value: Some(&id),
                })
                .insert(Header {
                    key: "courier-timestamp-ms",
                    value: Some(&now),
                }),
        )
}

/// Sends `count` records in windows of [`WINDOW`], awaiting every report.
async fn send_all(producer: &FutureProducer, topic: &str, size: usize, count: usize) {
    let payload = indexed_payload(size, 0);
    let mut sent = 0;
    while sent < count {
        let n = WINDOW.min(count - sent);
        let reports: Vec<_> = (0..n)
            .map(|_| {
                producer
                    .send_result(raw_record(topic, &payload))
                    .map_err(|(e, _)| e)
                    .expect("queue")
            })
            .collect();
        for report in futures::future::join_all(reports).await {
            report.expect("report").expect("delivered");
        }
        sent += n;
    }
}

async fn raw_publish(target: &Target, size: usize, count: usize) -> f64 {
    let name = target.topic("raw-pub");
    if target.mock.is_none() {
        create_topic(&target.bootstrap, &name).await;
    }
    let producer = producer(&target.bootstrap);
    send_all(&producer, &name, size, 1).await; // connection and producer id
    let started = Instant::now();
    send_all(&producer, &name, size, count).await;
    rate(count, started.elapsed())
}

async fn courier_publish(target: &Target, size: usize, count: usize) -> f64 {
    let broker = target.connect().await;
    let name = target.topic("courier-pub");
    broker
        .publish(&name, Message::new("warm-up"))
        .await
        .expect("topic and connection");
    let payload = bytes::Bytes::from(indexed_payload(size, 0));
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        let n = WINDOW.min(count - sent);
        let batch = (0..n).map(|_| Message::new(payload.clone())).collect();
        broker.publish_batch(&name, batch).await.expect("publish");
        sent += n;
    }
    let elapsed = started.elapsed();
    broker.close().await.expect("close");
    rate(count, elapsed)
}

/// A fresh topic holding `count` courier messages (what both consumers
/// read, so both decode the same records).
async fn filled(target: &Target, size: usize, count: usize) -> String {
    let broker = target.connect().await;
    let name = target.topic("consume");
    let payload = bytes::Bytes::from(indexed_payload(size, 0));
    let mut sent = 0;
    while sent < count {
        let n = 500.min(count - sent);
        let batch = (0..n).map(|_| Message::new(payload.clone())).collect();
        broker.publish_batch(&name, batch).await.expect("fill");
        sent += n;
    }
    broker.close().await.expect("close");
    name
}

fn raw_consumer(target: &Target, offset_reset: &str) -> StreamConsumer {
    let mut config = ClientConfig::new();
    if target.mock.is_some() {
        config.set("fetch.wait.max.ms", MOCK_FETCH_WAIT);
    }
    config
        .set("bootstrap.servers", &target.bootstrap)
        .set(
            "group.id",
            courier_testkit::fixtures::unique_name("bench-raw-group"),
        )
        .set("auto.offset.reset", offset_reset)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "100")
        .set("enable.auto.offset.store", "false")
        .set("max.partition.fetch.bytes", "16777216")
        .set("fetch.queue.backoff.ms", "50")
        .create()
        .expect("consumer")
}

async fn raw_consume(target: &Target, topic: &str, count: usize) -> f64 {
    raw_consume_reading(target, topic, count, false).await
}

/// The raw consume loop; with `headers`, it also reads each record's id
/// and timestamp headers.
async fn raw_consume_reading(target: &Target, topic: &str, count: usize, headers: bool) -> f64 {
    let consumer = raw_consumer(target, "earliest");
    let mut clock = ConsumeClock::start(target);
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut stream = consumer.stream();
    for received in 0..count {
        let record = tokio::time::timeout(STALL, stream.next())
            .await
            .unwrap_or_else(|_| panic!("raw consume stalled after {received} records"))
            .expect("stream")
            .expect("record");
        if headers {
            assert_eq!(
                courier_headers(&record),
                2,
                "record {received}: id and timestamp"
            );
        }
        consumer
            .store_offset_from_message(&record)
            .expect("store offset");
        clock.received(received);
    }
    let figure = clock.rate(count);
    drop(stream);
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    figure
}

/// How many of courier's id and timestamp headers `record` carries (each
/// value read as text).
fn courier_headers(record: &rdkafka::message::BorrowedMessage<'_>) -> usize {
    use rdkafka::message::Headers as _;
    record.headers().map_or(0, |headers| {
        headers
            .iter()
            .filter(|h| h.key == "courier-id" || h.key == "courier-timestamp-ms")
            .filter(|h| h.value.is_some_and(|v| std::str::from_utf8(v).is_ok()))
            .count()
    })
}

/// Times a consume run from subscribing, or from its first record where
/// [`Target::time_from_first`] says so.
struct ConsumeClock {
    started: Instant,
    from_first: bool,
}

impl ConsumeClock {
    fn start(target: &Target) -> Self {
        Self {
            started: Instant::now(),
            from_first: target.time_from_first(),
        }
    }

    /// Record `index` (counting from 0) was handled.
    fn received(&mut self, index: usize) {
        if self.from_first && index == 0 {
            self.started = Instant::now();
        }
    }

    /// Records per second over a run of `count`.
    fn rate(&self, count: usize) -> f64 {
        let timed = if self.from_first { count - 1 } else { count };
        rate(timed, self.started.elapsed())
    }
}

fn subscription(topic: &str) -> Subscription {
    Subscription::new(
        topic,
        courier_testkit::fixtures::unique_name("bench-courier-group"),
    )
    .start_from(StartPosition::Earliest)
}

async fn courier_consume(target: &Target, topic: &str, count: usize) -> f64 {
    let broker = target.connect().await;
    let sub = subscription(topic);
    broker.provision(&sub).await.expect("provision");
    let mut clock = ConsumeClock::start(target);
    let mut stream = broker.subscribe(sub).await.expect("subscribe");
    for received in 0..count {
        let delivery = tokio::time::timeout(STALL, stream.next())
            .await
            .unwrap_or_else(|_| panic!("courier consume stalled after {received} records"))
            .expect("stream")
            .expect("delivery");
        delivery.ack().await.expect("ack");
        clock.received(received);
    }
    let figure = clock.rate(count);
    broker.close().await.expect("close");
    figure
}

async fn runtime_consume(target: &Target, topic: &str, count: usize, concurrency: usize) -> f64 {
    let broker = target.connect().await;
    let sub = subscription(topic);
    broker.provision(&sub).await.expect("provision");
    let subscriber = Arc::new(broker.clone());
    let clock = if target.time_from_first() {
        RateClock::FromFirst
    } else {
        RateClock::FromStart
    };
    let figure = runtime_rate(subscriber, sub, count, concurrency, None, STALL, clock).await;
    broker.close().await.expect("close");
    figure
}

/// Open loop: `count` records at `per_second`, each published with its
/// report awaited (without holding up the schedule), consumed by a raw
/// consumer that joined before the first was due.
async fn raw_latency(target: &Target, size: usize, count: usize, per_second: u32) -> Latencies {
    let topic = target.topic("raw-latency");
    if target.mock.is_none() {
        create_topic(&target.bootstrap, &topic).await;
    }
    let producer = producer(&target.bootstrap);
    send_all(&producer, &topic, size, 1).await;
    let consumer = raw_consumer(target, "latest");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut stream = consumer.stream();
    // "latest" is the end at join time: send short join markers until one
    // arrives, so the timed records are published to a joined consumer.
    let joined = async {
        loop {
            let marker = FutureRecord::<[u8], [u8]>::to(&topic).payload(&b"join"[..]);
            let report = producer
                .send_result(marker)
                .map_err(|(e, _)| e)
                .expect("queue");
            report.await.expect("report").expect("delivered");
            let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
            if let Ok(Some(Ok(_))) = next {
                break;
            }
        }
    };
    tokio::time::timeout(STALL, joined)
        .await
        .expect("raw consumer joined");
    let schedule = OpenLoop::new(per_second);
    let publishing = async {
        let mut reports: futures::stream::FuturesUnordered<rdkafka::producer::DeliveryFuture> =
            futures::stream::FuturesUnordered::new();
        for i in 0..count {
            tokio::select! {
                () = schedule.wait_due(i) => {}
                Some(report) = reports.next(), if !reports.is_empty() => {
                    report.expect("report").expect("delivered");
                    schedule.wait_due(i).await;
                }
            }
            let payload = indexed_payload(size, i);
            let report = producer
                .send_result(raw_record(&topic, &payload))
                .map_err(|(e, _)| e)
                .expect("queue");
            reports.push(report);
        }
        while let Some(report) = reports.next().await {
            report.expect("report").expect("delivered");
        }
    };
    let consuming = async {
        let mut latencies = Latencies::with_capacity(count);
        while latencies.len() < count {
            let record = tokio::time::timeout(STALL, stream.next())
                .await
                .expect("raw latency consume stalled")
                .expect("stream")
                .expect("record");
            let payload = record.payload().expect("payload");
            // Join markers that arrived late are shorter than a timed record.
            if payload.len() >= 8 {
                latencies.record(schedule.due(payload_index(payload)), Instant::now());
            }
            consumer
                .store_offset_from_message(&record)
                .expect("store offset");
        }
        latencies
    };
    let ((), latencies) = futures::join!(publishing, consuming);
    latencies
}

async fn courier_latency(target: &Target, size: usize, count: usize, per_second: u32) -> Latencies {
    let broker = target.connect().await;
    let topic = target.topic("courier-latency");
    let sub = subscription(&topic).start_from(StartPosition::Latest);
    broker.provision(&sub).await.expect("provision");
    let mut stream = broker.subscribe(sub).await.expect("subscribe");
    // The group joins after `subscribe` returns: send warm-up messages
    // until one arrives, so the schedule starts with a joined consumer.
    let joined = async {
        loop {
            let warm_up = Message::new(indexed_payload(size, WARM_UP_INDEX));
            broker.publish(&topic, warm_up).await.expect("publish");
            let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
            if let Ok(Some(Ok(delivery))) = next {
                delivery.ack().await.expect("ack");
                break;
            }
        }
    };
    tokio::time::timeout(STALL, joined)
        .await
        .expect("courier consumer joined");
    let latencies =
        courier_open_loop(&broker, &topic, &mut stream, size, count, per_second, STALL).await;
    drop(stream);
    broker.close().await.expect("close");
    latencies
}
