//! courier-nats against raw async-nats on the same server, in one run:
//! JetStream publish with acks pipelined, then pull-consume and ack.
//!
//! `cargo bench -p courier-nats --bench throughput` (starts its own NATS
//! container; `COURIER_TEST_NATS_URL` uses a running server instead).
//! `-- N` sets the message count (default 100,000).

use courier_core::prelude::*;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use courier_core::{Message, Publisher, Subscriber, Subscription};
use courier_nats::NatsBroker;
use futures::StreamExt;

const PAYLOAD: [u8; 64] = [7; 64];
const WINDOW: usize = 256;

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let server = courier_testkit::fixtures::nats().await.expect("nats fixture");
        let url = server.url().to_owned();
        println!("NATS JetStream, {count} messages of 64 bytes, file storage, 2 worker threads");
        let raw_pub = raw_publish(&url, count, false).await;
        let raw_pub_id = raw_publish(&url, count, true).await;
        let courier_pub = courier_publish(&url, count).await;
        let raw_ack = raw_consume(&url, count, false).await;
        let raw_confirmed = raw_consume(&url, count, true).await;
        let courier_consume = courier_consume(&url, count).await;
        let rate = |d: Duration| count as f64 / d.as_secs_f64();
        println!("  publish (acks pipelined, {WINDOW} in flight)");
        println!("    raw async-nats      {:>10.0} msg/s", rate(raw_pub));
        println!("    raw + Nats-Msg-Id   {:>10.0} msg/s", rate(raw_pub_id));
        println!(
            "    courier-nats        {:>10.0} msg/s   ratio {:.2} vs raw + Nats-Msg-Id, {:.2} vs raw",
            rate(courier_pub),
            rate(courier_pub) / rate(raw_pub_id),
            rate(courier_pub) / rate(raw_pub)
        );
        println!("  pull-consume + ack");
        println!("    raw, ack unconfirmed    {:>10.0} msg/s", rate(raw_ack));
        println!("    raw, ack confirmed      {:>10.0} msg/s", rate(raw_confirmed));
        println!(
            "    courier-nats (confirmed) {:>9.0} msg/s   ratio {:.2} vs raw confirmed, {:.2} vs raw unconfirmed",
            rate(courier_consume),
            rate(courier_consume) / rate(raw_confirmed),
            rate(courier_consume) / rate(raw_ack)
        );
    });
}

fn topic(kind: &str) -> String {
    courier_testkit::fixtures::unique_name(&format!("bench-{kind}"))
}

async fn raw_publish(url: &str, count: usize, with_id: bool) -> Duration {
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client);
    let subject = topic("raw");
    js.get_or_create_stream(jetstream::stream::Config {
        name: courier_nats::stream_name(&subject),
        subjects: vec![subject.clone()],
        ..Default::default()
    })
    .await
    .expect("stream");
    let started = Instant::now();
    let mut pending = Vec::with_capacity(WINDOW);
    for _ in 0..count / WINDOW + 1 {
        for _ in 0..WINDOW {
            let payload = bytes::Bytes::from_static(&PAYLOAD);
            let ack = if with_id {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", courier_core::MessageId::new().to_string());
                js.publish_with_headers(subject.clone(), headers, payload)
                    .await
            } else {
                js.publish(subject.clone(), payload).await
            }
            .expect("publish");
            pending.push(ack.into_future());
        }
        for ack in futures::future::join_all(pending.drain(..)).await {
            ack.expect("publish ack");
        }
    }
    started.elapsed() * count as u32 / ((count / WINDOW + 1) * WINDOW) as u32
}

async fn courier_publish(url: &str, count: usize) -> Duration {
    let broker = NatsBroker::connect(url).await.expect("connect");
    let subject = topic("courier");
    Publisher::publish(&broker, &subject, Message::new("warm-up"))
        .await
        .expect("stream");
    let started = Instant::now();
    for _ in 0..count / WINDOW + 1 {
        let batch = (0..WINDOW).map(|_| Message::new(&PAYLOAD[..])).collect();
        Publisher::publish_batch(&broker, &subject, batch)
            .await
            .expect("publish");
    }
    started.elapsed() * count as u32 / ((count / WINDOW + 1) * WINDOW) as u32
}

/// Fills a fresh topic with `count` messages for a consume run.
async fn filled(url: &str, count: usize) -> String {
    let broker = NatsBroker::connect(url).await.expect("connect");
    let subject = topic("consume");
    let sub =
        Subscription::new(&subject, "bench").start_from(courier_core::StartPosition::Earliest);
    Subscriber::provision(&broker, &sub)
        .await
        .expect("provision");
    for chunk in 0..count.div_ceil(1000) {
        let n = 1000.min(count - chunk * 1000);
        let batch = (0..n).map(|_| Message::new(&PAYLOAD[..])).collect();
        Publisher::publish_batch(&broker, &subject, batch)
            .await
            .expect("fill");
    }
    broker.close().await.expect("close");
    subject
}

async fn raw_consume(url: &str, count: usize, confirmed: bool) -> Duration {
    let subject = filled(url, count).await;
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client);
    let stream = js
        .get_stream(courier_nats::stream_name(&subject))
        .await
        .expect("stream");
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(&courier_nats::consumer_name("bench"))
        .await
        .expect("consumer");
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(WINDOW)
        .messages()
        .await
        .expect("messages");
    for _ in 0..count {
        let message = messages.next().await.expect("open").expect("message");
        if confirmed {
            message.double_ack().await.expect("ack");
        } else {
            message.ack().await.expect("ack");
        }
    }
    started.elapsed()
}

async fn courier_consume(url: &str, count: usize) -> Duration {
    let subject = filled(url, count).await;
    let broker = NatsBroker::connect(url).await.expect("connect");
    let sub = Subscription::new(&subject, "bench").prefetch(WINDOW as u16);
    let started = Instant::now();
    let mut stream = Subscriber::subscribe(&broker, sub)
        .await
        .expect("subscribe");
    for _ in 0..count {
        let delivery = stream.next().await.expect("open").expect("delivery");
        delivery.ack().await.expect("ack");
    }
    let elapsed = started.elapsed();
    broker.close().await.expect("close");
    elapsed
}
