//! The store goes away mid-run: the Redis container is stopped while a
//! consumer works through its messages. Attempts fail transiently, no
//! message is acked without its handler having run, and the work resumes
//! when Redis is back.
//!
//! `cargo test -p courier-idempotency --features redis --test outage`

#![cfg(feature = "redis")]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_core::runtime::{self, Consumer, RetryPolicy};
use courier_core::{Message, Subscription};
use courier_idempotency::{IdempotencyLayer, StoreConfig};
use courier_testkit::fixtures::{fresh_redis, unique_name};

const MESSAGES: usize = 400;
const COPIES: usize = 2;
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run() {
    let redis = fresh_redis().await.expect("redis fixture");
    let config = StoreConfig::default()
        .operation_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1));
    let store = courier_idempotency::connect_with(redis.url(), config)
        .await
        .expect("redis store");
    let layer = IdempotencyLayer::new(store)
        .lease(Duration::from_secs(5))
        .in_progress_retry(Duration::from_millis(200));

    let effects: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let handler = runtime::raw({
        let effects = effects.clone();
        move |message: Message| {
            let effects = effects.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                *effects
                    .lock()
                    .expect("effects")
                    .entry(message.id().to_string())
                    .or_default() += 1;
                Ok(())
            }
        }
    });
    let broker = courier_memory::MemoryBroker::new().into_broker();
    let topic = unique_name("outage");
    let consumer = Consumer::builder(&broker, Subscription::new(&topic, "workers"), handler)
        .concurrency(8)
        // Outlast the outage: attempts every 50-500 ms for minutes.
        .retry(
            RetryPolicy::exponential()
                .max_attempts(10_000)
                .min_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(500)),
        )
        .layer(layer.clone())
        .build();
    let metrics = consumer.metrics();
    broker
        .provision(consumer.subscription())
        .await
        .expect("provision");
    let shutdown = consumer.shutdown_handle();
    let running = tokio::spawn(consumer.run());

    // Published at a steady pace, so that messages keep coming while Redis
    // is away.
    let publisher = tokio::spawn({
        let (broker, topic) = (broker.clone(), topic.clone());
        async move {
            for n in 0..MESSAGES {
                let message = Message::new(format!("message {n}"));
                for _ in 0..COPIES {
                    broker
                        .publish(&topic, message.clone())
                        .await
                        .expect("publish");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let distinct = || effects.lock().expect("effects").len();
    common::eventually("100 messages handled", DEADLINE, || async {
        (distinct() >= 100).then_some(())
    })
    .await;

    redis.stop().await.expect("stop redis");
    let stopped_at = Instant::now();
    let handled_at_stop = distinct();
    let acked_at_stop = metrics.snapshot().handled;
    common::eventually("attempts failing while redis is down", DEADLINE, || async {
        (layer.stats().store_errors >= 50).then_some(())
    })
    .await;
    let during = layer.stats();
    let failed_during = metrics.snapshot().failed;
    let handled_during = distinct();
    let acked_during = metrics.snapshot().handled;
    redis.start().await.expect("start redis");
    let outage = stopped_at.elapsed();

    common::eventually(
        "every copy acked after redis returned",
        DEADLINE,
        || async { (metrics.snapshot().handled >= (MESSAGES * COPIES) as u64).then_some(()) },
    )
    .await;
    publisher.await.expect("publisher");
    shutdown.shutdown();
    let stats = running.await.expect("consumer task").expect("consumer");
    let after = layer.stats();
    let effects = effects.lock().expect("effects");
    let total: u64 = effects.values().map(|n| u64::from(*n)).sum();
    println!(
        "outage of {outage:?}: at stop {handled_at_stop} handled / {acked_at_stop} acked; \
         while down {handled_during} handled / {acked_during} acked, {} store errors, \
         {failed_during} failed attempts; end: {} messages, {total} effects, consumer {stats:?}, \
         layer {after:?}",
        during.store_errors,
        effects.len(),
    );
    // Every message was handled and every copy acked: nothing was acked
    // without its handler having run, and nothing is left over.
    assert_eq!(effects.len(), MESSAGES);
    assert_eq!(stats.handled, (MESSAGES * COPIES) as u64);
    assert_eq!((stats.dead_lettered, stats.settle_errors), (0, 0));
    // While Redis was down the layer failed attempts instead of acking:
    // the only acks after the stop are of attempts that completed just
    // before it (at most one per concurrency slot).
    assert!(
        acked_during - acked_at_stop <= 8,
        "{acked_at_stop} -> {acked_during}"
    );
    assert!(during.store_errors >= 50, "{during:?}");
    assert!(failed_during >= 50, "{failed_during}");
    // A second effect comes only from a handler that succeeded while its
    // completion failed (and then ran again after its lease).
    assert!(
        total - MESSAGES as u64 <= after.complete_errors,
        "{total} effects for {MESSAGES} messages, {} failed completions",
        after.complete_errors
    );
}
