//! Unroutable publishes: a message published to a topic no consumer group
//! is bound to is never lost silently.
//!
//! Where the topic keeps messages for groups created later
//! ([`Capability::History`]: Kafka, NATS JetStream, the in-process broker
//! with retention) the publish returns `Ok` and a later group starting at
//! [`StartPosition::Earliest`] receives the message exactly once. Where it
//! does not (RabbitMQ), the publish fails within the publish bound with a
//! [`BrokerErrorKind::Unroutable`] error naming the topic, nothing is kept
//! for a group bound later, and with the shared URL option
//! `unroutable=drop` the same publish returns `Ok`.

use std::time::Duration;

use courier_core::adapter::url::{PUBLISH_TIMEOUT, UNROUTABLE, format_duration};
use courier_core::{BrokerErrorKind, Error, Message, StartPosition, Subscription};

use crate::harness::{Capability, Case, Ctx};

/// Every unroutable-publish case.
pub fn cases() -> Vec<Case> {
    vec![Case::new("publish_to_a_topic_without_groups", &[], |ctx| {
        Box::pin(publish_to_a_topic_without_groups(ctx))
    })]
}

/// The publish bound the case sets (shared URL option `publish_timeout`):
/// a publish whose return is lost would fail with a timeout after it, not
/// with an unroutable error.
const PUBLISH_BOUND: Duration = Duration::from_secs(5);

async fn publish_to_a_topic_without_groups(ctx: Ctx) {
    if ctx.adapter().has(Capability::History) {
        kept_for_a_later_group(&ctx).await;
    } else {
        unroutable_unless_dropped(&ctx).await;
    }
}

/// On a broker with history: `Ok`, and a later `Earliest` group receives
/// the message exactly once.
async fn kept_for_a_later_group(ctx: &Ctx) {
    let broker = ctx.broker().await;
    let topic = ctx.name("nobody");
    let message = Message::new("kept");
    let id = message.id().clone();
    broker
        .publish(&topic, message)
        .await
        .expect("the topic keeps the message for later groups: Ok");
    let late = Subscription::new(&topic, ctx.name("late")).start_from(StartPosition::Earliest);
    let mut stream = broker.subscribe(late).await.expect("subscribe");
    let delivery = ctx.next(&mut stream).await;
    assert_eq!(delivery.message().id(), &id);
    delivery.ack().await.expect("ack");
    ctx.expect_nothing(&mut stream).await;
    broker.close().await.expect("close");
}

/// On a broker without history: a typed error naming the topic within the
/// publish bound, for a publish and a batch; `Ok` with `unroutable=drop`;
/// and nothing of it reaches a group bound afterwards.
async fn unroutable_unless_dropped(ctx: &Ctx) {
    let bound = format_duration(PUBLISH_BOUND);
    let broker = ctx
        .broker_with_options(&[(PUBLISH_TIMEOUT, &bound), (UNROUTABLE, "error")])
        .await;
    let topic = ctx.name("nobody");
    let err = bounded(broker.publish(&topic, Message::new("lost")))
        .await
        .expect_err("a publish nobody can receive is an error");
    assert_unroutable(&err, &topic);
    let batch = (0..3).map(|i| Message::new(format!("lost-{i}"))).collect();
    let err = bounded(broker.publish_batch(&topic, batch))
        .await
        .expect_err("a batch nobody can receive is an error");
    assert_unroutable(&err, &topic);

    let dropping = ctx
        .broker_with_options(&[(PUBLISH_TIMEOUT, &bound), (UNROUTABLE, "drop")])
        .await;
    bounded(dropping.publish(&topic, Message::new("dropped")))
        .await
        .expect("unroutable=drop: Ok");
    bounded(dropping.publish_batch(&topic, vec![Message::new("dropped-too")]))
        .await
        .expect("unroutable=drop: a batch is Ok too");

    // With a group bound, the same handles publish and the group receives
    // exactly what came after it: nothing of the above was kept.
    let group = Subscription::new(&topic, ctx.name("g")).start_from(StartPosition::Earliest);
    broker.provision(&group).await.expect("provision");
    let routed = Message::new("routed");
    let routed_id = routed.id().clone();
    bounded(broker.publish(&topic, routed))
        .await
        .expect("a group is bound: Ok");
    let mut stream = broker.subscribe(group).await.expect("subscribe");
    let delivery = ctx.next(&mut stream).await;
    assert_eq!(
        delivery.message().id(),
        &routed_id,
        "an unroutable message reached a group bound later"
    );
    delivery.ack().await.expect("ack");
    ctx.expect_nothing(&mut stream).await;
    dropping.close().await.expect("close");
    broker.close().await.expect("close");
}

/// `publish` within the bound plus a margin for the round trips around it.
async fn bounded<T>(
    publish: impl Future<Output = courier_core::Result<T>>,
) -> courier_core::Result<T> {
    let limit = PUBLISH_BOUND + Duration::from_secs(5);
    tokio::time::timeout(limit, publish)
        .await
        .unwrap_or_else(|_| panic!("the publish did not return within {limit:?}"))
}

fn assert_unroutable(err: &Error, topic: &str) {
    assert_eq!(
        err.broker_kind(),
        Some(BrokerErrorKind::Unroutable),
        "not unroutable: {err:?}"
    );
    assert_eq!(
        courier_core::unroutable::topic(err),
        Some(topic),
        "the error names the topic: {err:?}"
    );
    assert!(err.to_string().contains(topic), "{err}");
    assert!(!err.is_retryable(), "{err:?}");
}
