//! Messages from other producers: plain ones are delivered with a derived
//! id; ones courier cannot represent go to the dead-letter topic with the
//! reason, payload kept.

use std::time::Duration;

use courier_core::delivery::DLQ_REASON;
use courier_core::{Subscriber, Subscription};
use courier_nats::NatsBroker;
use futures::StreamExt;

#[tokio::test]
async fn foreign_messages_are_delivered_or_dead_lettered_never_lost() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    let topic = courier_testkit::fixtures::unique_name("foreign");
    let sub = Subscription::new(&topic, "readers");
    let dlq = Subscription::new(format!("{topic}.dlq"), "ops");
    Subscriber::provision(&broker, &sub)
        .await
        .expect("provision");
    Subscriber::provision(&broker, &dlq)
        .await
        .expect("provision dlq");

    let js = async_nats::jetstream::new(broker.client().clone());
    // A plain message from another producer: no courier headers at all.
    js.publish(topic.clone(), "plain".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    // One that looks like courier's (`Nats-Msg-Id` and courier's timestamp)
    // whose id header breaks courier's rules (an id of 300 bytes).
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "broken-1");
    headers.insert("courier-timestamp-ms", "1");
    headers.insert("courier-id", "x".repeat(300));
    js.publish_with_headers(topic.clone(), headers, "broken".into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    let mut stream = Subscriber::subscribe(&broker, sub)
        .await
        .expect("subscribe");
    let plain = stream.next().await.expect("open").expect("delivery");
    assert_eq!(plain.message().payload().as_ref(), b"plain");
    assert!(
        plain.message().id().to_string().starts_with(&topic),
        "{:?}",
        plain.message().id()
    );
    plain.ack().await.expect("ack");
    let next = tokio::time::timeout(Duration::from_millis(700), stream.next()).await;
    assert!(
        next.is_err(),
        "the broken message must not reach handlers: {next:?}"
    );

    let mut dead = Subscriber::subscribe(&broker, dlq)
        .await
        .expect("subscribe dlq");
    let d = tokio::time::timeout(Duration::from_secs(15), dead.next())
        .await
        .expect("dead letter in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(d.message().payload().as_ref(), b"broken");
    let reason = d.message().header(DLQ_REASON).expect("reason");
    assert!(reason.starts_with("undecodable NATS headers"), "{reason}");
    d.ack().await.expect("ack");
    courier_core::Close::close(&broker).await.expect("close");
}
