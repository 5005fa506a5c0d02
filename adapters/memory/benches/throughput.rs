//! End-to-end throughput on the in-process broker: a publisher sends
//! 64-byte messages in batches of 1,000 while a consumer takes and acks
//! them, for one million messages; the consumer is a bare subscribe-and-ack
//! loop (the raw side) or the consumer runtime with a no-op handler
//! (courier). Medians of interleaved rounds.
//!
//! ```text
//! cargo bench -p courier-memory --bench throughput             # 1,000,000 messages, 5 rounds
//! cargo bench -p courier-memory --bench throughput -- 200000   # or any count
//! ```
//!
//! Cases: `publish+consume e2e` (runtime at its default concurrency, no
//! keys), `publish+consume e2e c=1`, and `publish+consume e2e keys=16`
//! (default concurrency, 16 keys: ordering lanes).

use std::time::{Duration, Instant};

use courier_core::prelude::*;
use courier_core::runtime::{self, Consumer, DEFAULT_CONCURRENCY, RetryPolicy};
use courier_core::{Message, Subscription};
use courier_memory::MemoryBroker;
mod common;

use common::{Counting, message_count, multi_thread};
use courier_testkit::bench::{Report, Row, Side, Unit, interleaved, rate};
use futures::StreamExt;

const BATCH: usize = 1_000;
const PAYLOAD: usize = 64;
const KEYS: usize = 16;

async fn publish_all(broker: MemoryBroker, messages: usize, keyed: bool) {
    let payload = bytes::Bytes::from(vec![7u8; PAYLOAD]);
    for start in (0..messages).step_by(BATCH) {
        let batch = (start..(start + BATCH).min(messages))
            .map(|i| {
                let message = Message::new(payload.clone());
                if keyed {
                    message.with_key(format!("key-{}", i % KEYS))
                } else {
                    message
                }
            })
            .collect();
        broker.publish_batch("bench", batch).await.expect("publish");
    }
}

async fn run(side: Side, messages: usize, concurrency: usize, keyed: bool) -> Duration {
    let broker = MemoryBroker::with_config(common::bench_config());
    let sub = Subscription::new("bench", "bench");
    let started;
    match side {
        Side::Raw => {
            let prefetch = u16::try_from(concurrency * 2)
                .unwrap_or(u16::MAX)
                .max(runtime::MIN_PREFETCH);
            let mut stream = broker
                .subscribe(sub.prefetch(prefetch))
                .await
                .expect("subscribe");
            started = Instant::now();
            let consumer = tokio::spawn(async move {
                for _ in 0..messages {
                    let delivery = stream.next().await.expect("open").expect("delivery");
                    delivery.ack().await.expect("ack");
                }
            });
            let producer = tokio::spawn(publish_all(broker.clone(), messages, keyed));
            producer.await.expect("producer");
            consumer.await.expect("consumer");
        }
        Side::Courier => {
            let (counting, handler) = Counting::handler(messages);
            let consumer = Consumer::builder(broker.clone().into_broker(), sub, handler)
                .concurrency(concurrency)
                .retry(RetryPolicy::none())
                .start()
                .await
                .expect("start");
            started = Instant::now();
            let producer = tokio::spawn(publish_all(broker.clone(), messages, keyed));
            counting.last.notified().await;
            while consumer.metrics().snapshot().handled < messages as u64 {
                tokio::task::yield_now().await;
            }
            let elapsed = started.elapsed();
            producer.await.expect("producer");
            consumer.shutdown().await.expect("shutdown");
            return elapsed;
        }
    }
    started.elapsed()
}

fn main() {
    let round_count = courier_testkit::bench::env_or(courier_testkit::bench::ROUNDS_ENV, 5).max(1);
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let messages = message_count(1_000_000);
    let rt = multi_thread(2);
    let mut report = Report::new(format!(
        "courier-memory end to end: publish_batch({BATCH}) + consume + ack, {messages} messages \
         of {PAYLOAD} bytes, 2 worker threads, raw = bare subscribe+ack loop, courier = consumer \
         runtime, median of {round_count} interleaved rounds"
    ));
    rt.block_on(async {
        run(
            Side::Courier,
            messages.min(100_000),
            DEFAULT_CONCURRENCY,
            false,
        )
        .await;
        for (case, concurrency, keyed) in [
            ("publish+consume e2e", DEFAULT_CONCURRENCY, false),
            ("publish+consume e2e c=1", 1, false),
            ("publish+consume e2e keys=16", DEFAULT_CONCURRENCY, true),
        ] {
            let rounds = interleaved(round_count, |side| async move {
                rate(messages, run(side, messages, concurrency, keyed).await)
            })
            .await;
            report.push(Row::new(
                "memory",
                case,
                PAYLOAD,
                Unit::MessagesPerSecond,
                &rounds,
            ));
        }
    });
    report.finish();
}
