//! Publish → receive latency at a fixed open-loop rate: courier-nats
//! against raw async-nats on the same server, in one run.
//!
//! Messages are published at 1,000 per second on a schedule that does not
//! wait for the previous publish (open loop, so a slow side cannot hide its
//! latency by publishing less); the latency of message `i` runs from the
//! moment it was due to the moment the subscriber has it. Both sides
//! publish confirmed (JetStream publish ack awaited off the schedule) and
//! ack confirmed (raw `double_ack`, courier `Delivery::ack`) off the
//! receive path.
//!
//! Each size also has `… raw against raw` rows: the raw client on both
//! sides of the same interleaved rounds. Their ratio, which the code
//! cannot move, is how far this machine and server move a ratio between
//! two runs of the same thing: a courier ratio inside it says nothing
//! about courier.
//!
//! `cargo bench -p courier-nats --bench latency` (starts its own NATS
//! container; `COURIER_TEST_NATS_URL` uses a running server instead).
//! `-- ROUNDS` (or `COURIER_BENCH_ROUNDS`) sets the rounds per payload size (default 5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use courier_core::prelude::*;
use courier_core::{Message, Publisher, Subscriber, Subscription};
use courier_nats::NatsBroker;
use courier_testkit::bench::{Latencies, OpenLoop, Report, Side, interleaved};
use courier_testkit::bench_runs::Percentiles;
use futures::StreamExt;

const RATE: u32 = 1_000;
/// Messages per round (2 seconds at the rate).
const MESSAGES: usize = 2_000;
const SIZES: [usize; 2] = [64, 16 * 1024];

fn main() {
    let rounds = courier_testkit::bench::rounds(5);
    let runtime = courier_testkit::bench::runtime();
    runtime.block_on(async move {
        let server = courier_testkit::fixtures::nats().await.expect("nats fixture");
        let url = server.url().to_owned();
        let mut report = Report::new(format!(
            "NATS JetStream publish → receive latency, open loop at {RATE}/s, {MESSAGES} messages a round, {rounds} rounds, 2 worker threads"
        ));
        let raw = async_nats::connect(&url).await.expect("connect");
        let js = jetstream::new(raw);
        let courier = NatsBroker::connect(&url).await.expect("connect");
        for size in SIZES {
            for against_itself in [false, true] {
                let percentiles = std::cell::RefCell::new(Percentiles::default());
                interleaved(rounds, |side| {
                    let (js, courier, percentiles) = (&js, &courier, &percentiles);
                    async move {
                        let mut latencies = match side {
                            Side::Courier if !against_itself => courier_round(courier, size).await,
                            _ => raw_round(js, size).await,
                        };
                        percentiles.borrow_mut().push(side, &mut latencies);
                        0.0
                    }
                })
                .await;
                let against = courier_testkit::bench::against_itself(against_itself);
                let suffix = format!("@{RATE}/s{against}");
                for row in percentiles.into_inner().rows("nats", &suffix, size) {
                    report.push(row);
                }
            }
        }
        report.finish();
        courier.close().await.expect("close");
    });
}

fn payload(i: usize, size: usize) -> bytes::Bytes {
    let mut body = vec![0u8; size];
    body[..8].copy_from_slice(&(i as u64).to_be_bytes());
    body.into()
}

fn index_of(payload: &[u8]) -> usize {
    u64::from_be_bytes(payload[..8].try_into().expect("8 bytes")) as usize
}

fn topic(kind: &str) -> String {
    courier_testkit::fixtures::unique_name(&format!("bench-lat-{kind}"))
}

async fn raw_round(js: &jetstream::Context, size: usize) -> Latencies {
    let subject = topic("raw");
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: courier_nats::stream_name(&subject),
            subjects: vec![subject.clone()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            "raw",
            jetstream::consumer::pull::Config {
                durable_name: Some("raw".to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let schedule = Arc::new(OpenLoop::new(RATE));
    let publishing = tokio::spawn({
        let (js, schedule, subject) = (js.clone(), schedule.clone(), subject.clone());
        async move {
            let mut acks = Vec::with_capacity(MESSAGES);
            for i in 0..MESSAGES {
                schedule.wait_due(i).await;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", courier_core::MessageId::new().to_string());
                let ack = js
                    .publish_with_headers(subject.clone(), headers, payload(i, size))
                    .await
                    .expect("publish");
                acks.push(tokio::spawn(std::future::IntoFuture::into_future(ack)));
            }
            for ack in acks {
                ack.await.expect("task").expect("publish ack");
            }
        }
    });
    let mut latencies = Latencies::with_capacity(MESSAGES);
    let mut acks = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES {
        let message = messages.next().await.expect("open").expect("message");
        let received = Instant::now();
        latencies.record(schedule.due(index_of(&message.payload)), received);
        acks.push(tokio::spawn(async move {
            message.double_ack().await.expect("ack");
        }));
    }
    publishing.await.expect("publisher");
    for ack in acks {
        ack.await.expect("ack task");
    }
    latencies
}

async fn courier_round(broker: &NatsBroker, size: usize) -> Latencies {
    let topic = topic("courier");
    let sub = Subscription::new(&topic, "courier");
    let mut stream = Subscriber::subscribe(broker, sub).await.expect("subscribe");
    let schedule = Arc::new(OpenLoop::new(RATE));
    let publishing = tokio::spawn({
        let (broker, schedule, topic) = (broker.clone(), schedule.clone(), topic.clone());
        async move {
            let mut acks = Vec::with_capacity(MESSAGES);
            for i in 0..MESSAGES {
                schedule.wait_due(i).await;
                let (broker, topic) = (broker.clone(), topic.clone());
                acks.push(tokio::spawn(async move {
                    Publisher::publish(&broker, &topic, Message::new(payload(i, size))).await
                }));
            }
            for ack in acks {
                ack.await.expect("task").expect("publish");
            }
        }
    });
    let mut latencies = Latencies::with_capacity(MESSAGES);
    let mut acks = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES {
        let delivery = stream.next().await.expect("open").expect("delivery");
        let received = Instant::now();
        latencies.record(
            schedule.due(index_of(delivery.message().payload())),
            received,
        );
        acks.push(tokio::spawn(async move {
            delivery.ack().await.expect("ack");
        }));
    }
    publishing.await.expect("publisher");
    for ack in acks {
        ack.await.expect("ack task");
    }
    latencies
}
