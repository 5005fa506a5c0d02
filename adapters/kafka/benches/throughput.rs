//! courier-kafka against raw rdkafka on the same broker, in one run:
//! consuming with offsets committed, then confirmed publishing (idempotent
//! producer, `acks=all`, delivery reports awaited in windows). The consume
//! runs come first: on tansu, consumers joining after the publish runs
//! sometimes receive nothing at all (the broker sits idle while the
//! consumer fetches), whichever client consumes.
//!
//! `cargo bench -p courier-kafka --bench throughput` (starts the Kafka
//! fixture container; `COURIER_TEST_KAFKA_URL` uses a running broker
//! instead). `-- N` sets the message count (default 100,000).
//!
//! `-- --mock` runs both sides against librdkafka's in-process mock
//! cluster instead. tansu, the broker of the tests, serves a few hundred
//! fetched records a second and slows down with record headers, so on it
//! the broker is the whole cost; on the mock cluster the clients' own cost
//! shows, which is what the ratio is about. The mock cluster cannot create
//! topics through the admin API, so every topic is created up front, with 8
//! partitions: a mock partition stops serving fetches after about 33,000
//! records (raw rdkafka and courier alike).
//!
//! Consume runs are timed from subscribing (joining the group included, the
//! same for both) to the last record settled; both sides commit in the
//! background (raw: offsets stored per message and auto-committed every
//! 100 ms; courier: acks committed every 100 ms by the watermark). The raw
//! publisher runs twice: bare records, and records carrying the two headers
//! courier writes for a plain message (id and timestamp), which is the
//! like-for-like comparison on a broker whose cost grows with headers.

use courier_core::prelude::*;
use std::time::{Duration, Instant};

use courier_core::{Message, StartPosition, Subscription};
use courier_kafka::KafkaBroker;
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

const PAYLOAD: [u8; 64] = [7; 64];
/// Records handed to the producer before their reports are awaited.
const WINDOW: usize = 1000;
/// A consume run that receives nothing for this long is reported stalled.
const STALL: Duration = Duration::from_secs(60);

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mock = std::env::args().any(|a| a == "--mock");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (target, _server) = if mock {
            let cluster = MockCluster::new(1).expect("mock cluster");
            let bootstrap = cluster.bootstrap_servers();
            let target = Target {
                url: format!("kafka://{bootstrap}"),
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
                url: server.url().to_owned(),
                bootstrap: server.bootstrap_servers().to_owned(),
                mock: None,
                partitions: 1,
            };
            (target, Some(server))
        };
        let bootstrap = target.bootstrap.as_str();
        let t = &target;
        println!(
            "{} at {bootstrap}, {count} messages of 64 bytes, {} partition(s), 2 worker threads",
            if mock {
                "librdkafka mock cluster"
            } else {
                "Kafka protocol broker"
            },
            target.partitions
        );
        let rate = |d: Duration| count as f64 / d.as_secs_f64();
        let phase = |name: &str, d: Duration| {
            eprintln!("  {name}: {:.1} s, {:.0} msg/s", d.as_secs_f64(), rate(d))
        };
        let courier_consume = courier_consume(t, count).await;
        phase("courier consume", courier_consume);
        let raw_consume = raw_consume(t, count).await;
        phase("raw consume", raw_consume);
        let raw_pub = raw_publish(t, count, false).await;
        phase("raw publish", raw_pub);
        let raw_pub_headers = raw_publish(t, count, true).await;
        phase("raw publish with headers", raw_pub_headers);
        let courier_pub = courier_publish(t, count).await;
        phase("courier publish", courier_pub);
        println!("  publish (idempotent, acks=all, {WINDOW} reports awaited per window)");
        println!("    raw FutureProducer            {:>10.0} msg/s", rate(raw_pub));
        println!("    raw, id + timestamp headers   {:>10.0} msg/s", rate(raw_pub_headers));
        println!(
            "    courier-kafka                 {:>10.0} msg/s   ratio {:.2} vs raw with headers, {:.2} vs bare raw",
            rate(courier_pub),
            rate(courier_pub) / rate(raw_pub_headers),
            rate(courier_pub) / rate(raw_pub)
        );
        println!("  consume + commit");
        println!("    raw StreamConsumer            {:>10.0} msg/s", rate(raw_consume));
        println!(
            "    courier-kafka (ack)           {:>10.0} msg/s   ratio {:.2}",
            rate(courier_consume),
            rate(courier_consume) / rate(raw_consume)
        );
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
const MOCK_PARTITIONS: i32 = 8;

impl Target {
    /// A new topic name. On the mock cluster the topic (and the companion
    /// topic courier's consumer writes settled offsets to) is created now.
    fn topic(&self, kind: &str) -> String {
        let name = courier_testkit::fixtures::unique_name(&format!("bench-{kind}"));
        if let Some(mock) = &self.mock {
            for topic in [name.clone(), format!("{name}.courier-settled")] {
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

/// Sends `count` records in windows of [`WINDOW`], awaiting every report.
async fn send_all(producer: &FutureProducer, topic: &str, count: usize, headers: bool) {
    let mut sent = 0;
    while sent < count {
        let n = WINDOW.min(count - sent);
        let reports: Vec<_> = (0..n)
            .map(|_| {
                let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(&PAYLOAD[..]);
                if headers {
                    let id = courier_core::MessageId::new().to_string();
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .expect("clock")
                        .as_millis()
                        .to_string();
                    record = record.headers(
                        OwnedHeaders::new()
                            .insert(Header {
                                key: "courier-id",
                                value: Some(&id),
                            })
                            .insert(Header {
                                key: "courier-timestamp-ms",
                                value: Some(&now),
                            }),
                    );
                }
                producer
                    .send_result(record)
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

async fn raw_publish(target: &Target, count: usize, headers: bool) -> Duration {
    let name = target.topic("raw-pub");
    if target.mock.is_none() {
        create_topic(&target.bootstrap, &name).await;
    }
    let producer = producer(&target.bootstrap);
    send_all(&producer, &name, 1, headers).await; // connection and producer id
    let started = Instant::now();
    send_all(&producer, &name, count, headers).await;
    started.elapsed()
}

async fn courier_publish(target: &Target, count: usize) -> Duration {
    let broker = KafkaBroker::connect(&target.url).await.expect("connect");
    let name = target.topic("courier-pub");
    broker
        .publish(&name, Message::new("warm-up"))
        .await
        .expect("topic and connection");
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        let n = WINDOW.min(count - sent);
        let batch = (0..n).map(|_| Message::new(&PAYLOAD[..])).collect();
        broker.publish_batch(&name, batch).await.expect("publish");
        sent += n;
    }
    let elapsed = started.elapsed();
    broker.close().await.expect("close");
    elapsed
}

/// A fresh topic holding `count` courier messages (what both consumers
/// read, so both decode the same records).
async fn filled(target: &Target, count: usize) -> String {
    let broker = KafkaBroker::connect(&target.url).await.expect("connect");
    let name = target.topic("consume");
    let mut sent = 0;
    while sent < count {
        let n = 500.min(count - sent);
        let batch = (0..n).map(|_| Message::new(&PAYLOAD[..])).collect();
        broker.publish_batch(&name, batch).await.expect("fill");
        sent += n;
    }
    broker.close().await.expect("close");
    name
}

async fn raw_consume(target: &Target, count: usize) -> Duration {
    let name = filled(target, count).await;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &target.bootstrap)
        .set(
            "group.id",
            courier_testkit::fixtures::unique_name("bench-raw-group"),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "100")
        .set("enable.auto.offset.store", "false")
        .set("max.partition.fetch.bytes", "16777216")
        .create()
        .expect("consumer");
    let started = Instant::now();
    consumer.subscribe(&[&name]).expect("subscribe");
    let mut stream = consumer.stream();
    for received in 0..count {
        let record = tokio::time::timeout(STALL, stream.next())
            .await
            .unwrap_or_else(|_| panic!("raw consume stalled after {received} records"))
            .expect("stream")
            .expect("record");
        consumer
            .store_offset_from_message(&record)
            .expect("store offset");
    }
    let elapsed = started.elapsed();
    drop(stream);
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    elapsed
}

async fn courier_consume(target: &Target, count: usize) -> Duration {
    let name = filled(target, count).await;
    let broker = KafkaBroker::connect(&target.url).await.expect("connect");
    let sub = Subscription::new(
        &name,
        courier_testkit::fixtures::unique_name("bench-courier-group"),
    )
    .start_from(StartPosition::Earliest);
    broker.provision(&sub).await.expect("provision");
    let started = Instant::now();
    let mut stream = broker.subscribe(sub).await.expect("subscribe");
    for received in 0..count {
        let delivery = tokio::time::timeout(STALL, stream.next())
            .await
            .unwrap_or_else(|_| panic!("courier consume stalled after {received} records"))
            .expect("stream")
            .expect("delivery");
        delivery.ack().await.expect("ack");
    }
    let elapsed = started.elapsed();
    broker.close().await.expect("close");
    elapsed
}
