//! Raw lapin against courier-amqp on the same RabbitMQ, in one run:
//! publishing with confirms (pipelined, in batches) and consuming with acks,
//! 100,000 messages of 64 bytes each way. Both sides use the same topology
//! (a durable fanout exchange bound to a quorum queue), persistent messages
//! and the same prefetch.
//!
//! `cargo bench -p courier-amqp` starts the RabbitMQ fixture (or uses
//! `COURIER_TEST_RABBITMQ_URL`). `COURIER_BENCH_MESSAGES` and
//! `COURIER_BENCH_ROUNDS` (default 3) change the size. Each side publishes
//! and then drains its own queue, the side going first alternates by round,
//! and the best round of each side is reported.

use courier_core::prelude::*;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courier_amqp::AmqpBroker;
use courier_core::{Message, MessageId, Subscription};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

const PAYLOAD: usize = 64;
const BATCH: usize = 1_000;
const PREFETCH: u16 = 256;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// The raw client, set up as courier-amqp sets itself up.
struct Raw {
    connection: Connection,
    publish: Channel,
    consume: Channel,
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("raw connect");
        let publish = connection.create_channel().await.unwrap();
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let consume = connection.create_channel().await.unwrap();
        Raw {
            connection,
            publish,
            consume,
        }
    }

    async fn declare(&self, topic: &str) -> String {
        let queue = format!("{topic}.raw");
        self.publish
            .exchange_declare(
                topic.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        self.publish
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .unwrap();
        self.publish
            .queue_bind(
                queue.as_str().into(),
                topic.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        queue
    }

    /// Publishes `n` messages: each batch is sent, then its confirms awaited.
    async fn publish(&self, topic: &str, n: usize) -> Duration {
        let payload = vec![7u8; PAYLOAD];
        let started = Instant::now();
        let mut sent = 0;
        while sent < n {
            let batch = BATCH.min(n - sent);
            let mut confirms = Vec::with_capacity(batch);
            for _ in 0..batch {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(MessageId::new().to_string().into())
                    .with_timestamp(now.as_secs());
                let confirm = self
                    .publish
                    .basic_publish(
                        topic.into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        &payload,
                        properties,
                    )
                    .await
                    .unwrap();
                confirms.push(confirm);
            }
            for confirm in confirms {
                assert!(confirm.await.unwrap().is_ack());
            }
            sent += batch;
        }
        started.elapsed()
    }

    /// Consumes and acks `n` messages.
    async fn consume(&self, queue: &str, n: usize) -> Duration {
        self.consume
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .unwrap();
        let tag = format!("raw-{}", MessageId::new());
        let mut consumer = self
            .consume
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let started = Instant::now();
        for _ in 0..n {
            let delivery = consumer.next().await.expect("open").expect("delivery");
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        let elapsed = started.elapsed();
        self.consume
            .basic_cancel(tag.as_str().into(), Default::default())
            .await
            .unwrap();
        elapsed
    }
}

/// courier-amqp, through the same API an application uses.
async fn courier_publish(broker: &AmqpBroker, topic: &str, n: usize) -> Duration {
    let payload = bytes::Bytes::from(vec![7u8; PAYLOAD]);
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let batch = BATCH.min(n - sent);
        let messages = (0..batch).map(|_| Message::new(payload.clone())).collect();
        broker.publish_batch(topic, messages).await.unwrap();
        sent += batch;
    }
    started.elapsed()
}

async fn courier_consume(broker: &AmqpBroker, sub: Subscription, n: usize) -> Duration {
    let mut stream = broker.subscribe(sub).await.unwrap();
    let started = Instant::now();
    for _ in 0..n {
        let delivery = stream.next().await.expect("open").expect("delivery");
        delivery.ack().await.unwrap();
    }
    started.elapsed()
}

/// Lets the broker finish background work (queue compaction) of the
/// previous phase.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[derive(Default)]
struct Best {
    raw_publish: f64,
    courier_publish: f64,
    raw_consume: f64,
    courier_consume: f64,
}

fn main() {
    let messages = env_or("COURIER_BENCH_MESSAGES", 100_000);
    let rounds = env_or("COURIER_BENCH_ROUNDS", 3).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let fixture = courier_testkit::fixtures::rabbitmq()
            .await
            .expect("RabbitMQ fixture");
        let url = fixture.url().to_owned();
        let raw = Raw::connect(&url).await;
        let courier = AmqpBroker::connect(&url).await.expect("courier connect");
        let run = MessageId::new().to_string();
        let run = &run[run.len() - 12..];

        // Warm up both sides (connections, channels, the broker's JIT).
        let warm = messages.min(10_000);
        let raw_queue = raw.declare(&format!("bench-warm-raw-{run}")).await;
        raw.publish(&format!("bench-warm-raw-{run}"), warm).await;
        raw.consume(&raw_queue, warm).await;
        let sub = Subscription::new(format!("bench-warm-courier-{run}"), "g").prefetch(PREFETCH);
        courier.provision(&sub).await.unwrap();
        courier_publish(&courier, sub.topic(), warm).await;
        courier_consume(&courier, sub, warm).await;

        println!(
            "AMQP throughput, {messages} messages of {PAYLOAD} bytes, persistent, quorum queue, \
             confirms pipelined in batches of {BATCH}, prefetch {PREFETCH}, {rounds} round(s)"
        );
        let mut best = Best::default();
        for round in 1..=rounds {
            let raw_topic = format!("bench-raw-{run}-{round}");
            let raw_queue = raw.declare(&raw_topic).await;
            let sub =
                Subscription::new(format!("bench-courier-{run}-{round}"), "g").prefetch(PREFETCH);
            courier.provision(&sub).await.unwrap();
            // Each side publishes, then drains its queue, on an otherwise
            // idle broker; which side goes first alternates.
            let mut raw_rates = (0.0, 0.0);
            let mut courier_rates = (0.0, 0.0);
            for side in 0..2 {
                if (side + round) % 2 == 1 {
                    settle().await;
                    raw_rates.0 = rate(messages, raw.publish(&raw_topic, messages).await);
                    settle().await;
                    raw_rates.1 = rate(messages, raw.consume(&raw_queue, messages).await);
                } else {
                    settle().await;
                    courier_rates.0 = rate(
                        messages,
                        courier_publish(&courier, sub.topic(), messages).await,
                    );
                    settle().await;
                    courier_rates.1 = rate(
                        messages,
                        courier_consume(&courier, sub.clone(), messages).await,
                    );
                }
            }
            println!(
                "round {round}: publish raw {:>7.0}/s courier {:>7.0}/s | \
                 consume+ack raw {:>7.0}/s courier {:>7.0}/s",
                raw_rates.0, courier_rates.0, raw_rates.1, courier_rates.1
            );
            best.raw_publish = best.raw_publish.max(raw_rates.0);
            best.courier_publish = best.courier_publish.max(courier_rates.0);
            best.raw_consume = best.raw_consume.max(raw_rates.1);
            best.courier_consume = best.courier_consume.max(courier_rates.1);
        }
        println!(
            "publish (confirms):  raw lapin {:>9.0} msg/s  courier-amqp {:>9.0} msg/s  ratio {:.3}",
            best.raw_publish,
            best.courier_publish,
            best.courier_publish / best.raw_publish
        );
        println!(
            "consume + ack:       raw lapin {:>9.0} msg/s  courier-amqp {:>9.0} msg/s  ratio {:.3}",
            best.raw_consume,
            best.courier_consume,
            best.courier_consume / best.raw_consume
        );
        courier.close().await.unwrap();
        let _ = raw.connection.close(200, "done".into()).await;
    });
}
