//! Observability cases every adapter must pass: consumer lag and health.

use std::time::{Duration, Instant};

use courier_core::telemetry::{Health, Lag};
use courier_core::{Broker, Message, Subscription};

use crate::harness::{Case, Ctx};

/// Every observability case.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new("lag_reads_what_the_group_has_not_settled", &[], |ctx| {
            Box::pin(lag_reads_what_the_group_has_not_settled(ctx))
        }),
        Case::new("health_is_usable_until_close", &[], |ctx| {
            Box::pin(health_is_usable_until_close(ctx))
        }),
    ]
}

/// Publish 1,000, consume and ack 400: the lag reads 600.
///
/// Where the broker counts delivered-but-unacked messages (memory, NATS:
/// `unacked` is known; Kafka: the committed offset), it reads exactly 600
/// while the stream still holds prefetched deliveries. RabbitMQ reports
/// ready messages only, so it reads exactly 600 once the stream is dropped
/// and its prefetched deliveries are back in the queue; every adapter must
/// read 600 then.
async fn lag_reads_what_the_group_has_not_settled(ctx: Ctx) {
    let broker = ctx.broker().await;
    let (topic, group) = (ctx.name("lag"), ctx.name("billing"));
    let subscription = Subscription::new(&topic, &group).prefetch(50);
    broker.provision(&subscription).await.expect("provision");
    for chunk in 0..10 {
        let messages = (0..100)
            .map(|i| Message::new(format!("{}", chunk * 100 + i)))
            .collect();
        broker
            .publish_batch(&topic, messages)
            .await
            .expect("publish");
    }
    let before = wait_for_lag(&ctx, &broker, &topic, &group, 1000).await;
    assert_eq!(before.total, 1000, "{before:?}");

    let mut stream = broker.subscribe(subscription).await.expect("subscribe");
    for _ in 0..400 {
        ctx.next(&mut stream).await.ack().await.expect("ack");
    }
    let counts_unacked = broker
        .lag(&topic, &group)
        .await
        .expect("lag")
        .counts_unacked();
    let expected_counting = matches!(ctx.adapter().name(), "memory" | "nats" | "kafka");
    assert_eq!(
        counts_unacked,
        expected_counting,
        "{}: whether the lag counts unacked messages",
        ctx.adapter().name()
    );
    if counts_unacked {
        let during = wait_for_lag(&ctx, &broker, &topic, &group, 600).await;
        assert_eq!(during.total, 600, "while subscribed: {during:?}");
    }
    drop(stream);
    let after = wait_for_lag(&ctx, &broker, &topic, &group, 600).await;
    assert_eq!(after.total, 600, "after the stream ended: {after:?}");
    match ctx.adapter().name() {
        // The in-process broker takes dropped deliveries back at once.
        "memory" => assert_eq!(after.ready.zip(after.unacked), Some((600, 0))),
        // JetStream may keep the stream's last pulls ack-pending a while.
        "nats" => {
            let (ready, unacked) = after.ready.zip(after.unacked).expect("both known");
            assert_eq!(ready + unacked, 600, "{after:?}");
        }
        "amqp" => assert_eq!((after.ready, after.unacked), (Some(600), None)),
        "kafka" => {
            assert!(!after.partitions.is_empty());
            let sum: u64 = after.partitions.iter().map(|p| p.lag).sum();
            assert_eq!(sum, 600, "{after:?}");
        }
        _ => {}
    }
    broker.close().await.expect("close");
}

/// Reads the lag until it is `expected` (acks reach some brokers' counts a
/// little later), for at most the adapter's patience; returns the last read.
async fn wait_for_lag(ctx: &Ctx, broker: &Broker, topic: &str, group: &str, expected: u64) -> Lag {
    let deadline = Instant::now() + ctx.patience();
    loop {
        let lag = broker.lag(topic, group).await.expect("lag");
        if lag.total == expected || Instant::now() >= deadline {
            return lag;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection that has just worked is usable; a closed one is not.
async fn health_is_usable_until_close(ctx: Ctx) {
    let broker = ctx.broker().await;
    let (topic, group) = (ctx.name("health"), ctx.name("probe"));
    broker
        .provision(&Subscription::new(&topic, &group))
        .await
        .expect("provision");
    broker
        .publish(&topic, Message::new("x"))
        .await
        .expect("publish");
    assert_eq!(broker.health(), Health::Usable);
    broker.close().await.expect("close");
    assert!(
        matches!(broker.health(), Health::Unusable(_)),
        "{}",
        broker.health()
    );
}
