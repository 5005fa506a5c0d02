//! End-to-end throughput of the in-process broker: publish, consume and ack
//! one million 64-byte messages, with batched and with single publishes.
//!
//! `cargo bench -p courier-memory --bench throughput`

use courier_core::prelude::*;
use std::time::{Duration, Instant};

use courier_core::{Message, Subscription};
use courier_memory::MemoryBroker;
use futures::StreamExt;

const MESSAGES: usize = 1_000_000;
const BATCH: usize = 1_000;

async fn run(batched: bool) -> Duration {
    let broker = MemoryBroker::new();
    let sub = Subscription::new("bench", "bench").prefetch(4096);
    let mut stream = broker.subscribe(sub).await.expect("subscribe");
    let payload = bytes::Bytes::from(vec![7u8; 64]);
    let started = Instant::now();
    let consumer = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            let delivery = stream.next().await.expect("open").expect("delivery");
            delivery.ack().await.expect("ack");
        }
    });
    let publisher = broker.clone();
    let producer = tokio::spawn(async move {
        if batched {
            for _ in 0..MESSAGES / BATCH {
                let batch = (0..BATCH).map(|_| Message::new(payload.clone())).collect();
                publisher
                    .publish_batch("bench", batch)
                    .await
                    .expect("publish");
            }
        } else {
            for _ in 0..MESSAGES {
                publisher
                    .publish("bench", Message::new(payload.clone()))
                    .await
                    .expect("publish");
            }
        }
    });
    producer.await.expect("producer");
    consumer.await.expect("consumer");
    started.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "courier-memory: publish + consume + ack, {MESSAGES} messages of 64 bytes, 2 worker threads"
    );
    for (label, batched) in [
        ("publish_batch(1000)", true),
        ("publish (one by one)", false),
    ] {
        // One warm-up round, then the measured one.
        runtime.block_on(run(batched));
        let elapsed = runtime.block_on(run(batched));
        let rate = MESSAGES as f64 / elapsed.as_secs_f64();
        println!(
            "  {label:<22} {:>8.0} ms  {:>12.0} msg/s",
            elapsed.as_secs_f64() * 1e3,
            rate
        );
    }
}
