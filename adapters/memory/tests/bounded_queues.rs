//! A group holds at most `max_queue_len` messages: publishes past it wait
//! for room or fail, as configured, and nothing is appended in part.

use std::time::{Duration, Instant};

use courier_core::prelude::*;
use courier_core::{BrokerErrorKind, Error, Message, Nack, Subscription};
use courier_memory::{MemoryBroker, MemoryConfig, WhenFull};

/// Far above anything the tests wait for when nothing is wrong.
const PATIENCE: Duration = Duration::from_secs(10);

fn numbered(range: std::ops::Range<usize>) -> Vec<Message> {
    range.map(|n| Message::new(format!("{n}"))).collect()
}

#[tokio::test]
async fn a_full_group_rejects_with_a_typed_error_naming_it() {
    let broker = MemoryBroker::with_config(
        MemoryConfig::default()
            .max_queue_len(3)
            .when_full(WhenFull::Reject),
    );
    let sub = Subscription::new("orders", "billing");
    broker.provision(&sub).await.unwrap();
    // A second group, to show that a publish is all or nothing.
    let audit = Subscription::new("orders", "audit");
    broker.provision(&audit).await.unwrap();
    broker
        .publish_batch("orders", numbered(0..3))
        .await
        .unwrap();

    let refused = broker.publish("orders", Message::new("3")).await;
    let Err(error @ Error::Broker { .. }) = refused else {
        panic!("expected a broker error, got {refused:?}");
    };
    assert_eq!(error.broker_kind(), Some(BrokerErrorKind::LimitReached));
    let shown = format!("{error} {:?}", std::error::Error::source(&error));
    assert!(
        shown.contains("\"billing\"") && shown.contains("\"orders\"") && shown.contains('3'),
        "{shown}"
    );
    assert_eq!(broker.lag("orders", "billing").await.unwrap().total, 3);
    assert_eq!(broker.lag("orders", "audit").await.unwrap().total, 3);

    // Handed out but unsettled still counts.
    let mut stream = broker.subscribe(sub.clone()).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(broker.publish("orders", Message::new("3")).await.is_err());
    // Room in billing, none in audit: still refused, naming audit, and
    // billing gets nothing.
    first.ack().await.unwrap();
    let refused = broker
        .publish("orders", Message::new("3"))
        .await
        .unwrap_err();
    let reason = std::error::Error::source(&refused).unwrap().to_string();
    assert!(reason.contains("group \"audit\""), "{reason}");
    assert_eq!(broker.lag("orders", "billing").await.unwrap().total, 2);
    // Room in both: through.
    let mut audit_stream = broker.subscribe(audit.clone()).await.unwrap();
    audit_stream
        .next()
        .await
        .unwrap()
        .unwrap()
        .ack()
        .await
        .unwrap();
    broker.publish("orders", Message::new("3")).await.unwrap();
    assert_eq!(broker.lag("orders", "billing").await.unwrap().total, 3);
    assert_eq!(broker.lag("orders", "audit").await.unwrap().total, 3);
}

#[tokio::test]
async fn a_full_group_makes_the_publisher_wait_for_room() {
    let broker = MemoryBroker::with_config(MemoryConfig::default().max_queue_len(2));
    let sub = Subscription::new("orders", "billing");
    let mut stream = broker.subscribe(sub.clone()).await.unwrap();
    broker
        .publish_batch("orders", numbered(0..2))
        .await
        .unwrap();

    let waiting = tokio::spawn({
        let broker = broker.clone();
        async move { broker.publish("orders", Message::new("2")).await }
    });
    // Nothing settles, so the publish cannot finish: give it time to try.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "a publish into a full group returned"
    );

    // One settlement lets it through.
    let delivery = stream.next().await.unwrap().unwrap();
    delivery.ack().await.unwrap();
    tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiting publish went on after a settlement")
        .unwrap()
        .unwrap();
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let delivery = stream.next().await.unwrap().unwrap();
        bodies.push(String::from_utf8(delivery.message().payload().to_vec()).unwrap());
        delivery.ack().await.unwrap();
    }
    assert_eq!(bodies, ["1", "2"]);
}

#[tokio::test]
async fn waiting_for_room_is_bounded_by_the_publish_timeout() {
    let timeout = Duration::from_millis(300);
    let broker = MemoryBroker::with_config(
        MemoryConfig::default()
            .max_queue_len(1)
            .publish_timeout(timeout),
    );
    broker
        .provision(&Subscription::new("orders", "billing"))
        .await
        .unwrap();
    broker.publish("orders", Message::new("0")).await.unwrap();
    let started = Instant::now();
    let outcome = tokio::time::timeout(PATIENCE, broker.publish("orders", Message::new("1")))
        .await
        .expect("the publish is bounded");
    assert!(
        matches!(outcome, Err(Error::Timeout { after, .. }) if after == timeout),
        "{outcome:?}"
    );
    assert!(started.elapsed() >= timeout);
    assert_eq!(broker.lag("orders", "billing").await.unwrap().total, 1);
}

#[tokio::test]
async fn a_batch_larger_than_the_limit_is_refused_at_once_and_topics_without_groups_are_not_bounded()
 {
    let broker = MemoryBroker::with_config(MemoryConfig::default().max_queue_len(2));
    // No group: only retention applies.
    broker
        .publish_batch("orders", numbered(0..5))
        .await
        .unwrap();
    broker
        .provision(&Subscription::new("orders", "billing"))
        .await
        .unwrap();
    let outcome = tokio::time::timeout(PATIENCE, broker.publish_batch("orders", numbered(0..3)))
        .await
        .expect("refused at once, not after waiting");
    assert_eq!(
        outcome.unwrap_err().broker_kind(),
        Some(BrokerErrorKind::LimitReached)
    );
    assert_eq!(broker.lag("orders", "billing").await.unwrap().total, 0);
}

#[tokio::test]
async fn a_dead_letter_into_a_full_group_is_refused_and_the_message_stays() {
    let broker = MemoryBroker::with_config(MemoryConfig::default().max_queue_len(1));
    let sub = Subscription::new("orders", "billing");
    let dead = Subscription::new("orders.dlq", "ops");
    broker.provision(&dead).await.unwrap();
    broker
        .publish("orders.dlq", Message::new("old"))
        .await
        .unwrap();
    let mut stream = broker.subscribe(sub.clone()).await.unwrap();
    broker
        .publish("orders", Message::new("poison"))
        .await
        .unwrap();
    let delivery = stream.next().await.unwrap().unwrap();
    let refused = delivery.nack(Nack::dead_letter("bad payload")).await;
    assert_eq!(
        refused.unwrap_err().broker_kind(),
        Some(BrokerErrorKind::LimitReached)
    );
    // Still in its own group, and the dead-letter group got nothing more.
    let again = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(again.message().payload().as_ref(), b"poison");
    assert_eq!(broker.lag("orders.dlq", "ops").await.unwrap().total, 1);
}
