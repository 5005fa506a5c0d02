//! What the AMQP adapter adds to the conformance suite: settling after a
//! lost connection, delayed requeue through retry queues, dead-lettering
//! without a dead-letter group, classic queues, single active consumer,
//! messages of other producers, and refused declarations.

mod common;

use courier_core::prelude::*;
use std::error::Error as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{next, nothing, text};
use courier_amqp::{AmqpBroker, AmqpConfig, AmqpError, QueueType};
use courier_core::{Error, Message, Nack, Subscription};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const PATIENCE: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(700);

async fn broker(config: AmqpConfig) -> AmqpBroker {
    let fixture = common::shared().await;
    AmqpBroker::connect_with(fixture.url(), config)
        .await
        .expect("connect")
}

fn amqp_source(err: &Error) -> Option<&AmqpError> {
    err.source()?.downcast_ref::<AmqpError>()
}

#[tokio::test]
async fn settling_after_a_lost_connection_fails_and_the_stream_resumes() {
    let fixture = common::shared().await;
    let vhost = common::name("kill");
    let Some(url) = common::own_vhost(&fixture, &vhost) else {
        eprintln!("skipped: the RabbitMQ fixture cannot be administered");
        return;
    };
    let broker = AmqpBroker::connect(&url).await.expect("connect");
    let sub = Subscription::new(common::name("t"), "g").prefetch(10);
    let mut stream = broker.subscribe(sub.clone()).await.unwrap();
    broker
        .publish(sub.topic(), Message::new("a"))
        .await
        .unwrap();
    let held = next(&mut stream, PATIENCE).await;
    assert_eq!(text(&held), "a");
    assert_eq!(held.delivery_count(), Some(1));

    common::kill_connections(&fixture, &vhost);
    // The client learns of the closed connection as soon as the broker says so.
    let deadline = Instant::now() + PATIENCE;
    let mut again = loop {
        match tokio::time::timeout(
            Duration::from_millis(200),
            futures::StreamExt::next(&mut stream),
        )
        .await
        {
            Ok(Some(Ok(d))) => break d,
            Ok(other) => panic!("stream: {other:?}"),
            Err(_) => assert!(Instant::now() < deadline, "no redelivery after reconnect"),
        }
    };
    let err = held
        .ack()
        .await
        .expect_err("an ack on the dead channel must fail");
    assert!(
        matches!(amqp_source(&err), Some(AmqpError::StaleDelivery)),
        "{err:?}"
    );
    assert_eq!(text(&again), "a", "the unsettled message comes back");
    assert_eq!(again.delivery_count(), Some(2));
    again.ack().await.expect("ack after reconnect");

    // Both connections came back: publishing and consuming go on.
    for round in 0..2 {
        broker
            .publish(sub.topic(), Message::new(format!("b{round}")))
            .await
            .expect("publish after reconnect");
        again = next(&mut stream, PATIENCE).await;
        assert_eq!(text(&again), format!("b{round}"));
        again.ack().await.unwrap();
        common::kill_connections(&fixture, &vhost);
    }
    broker
        .publish(sub.topic(), Message::new("c"))
        .await
        .expect("publish after the second kill");
    let last = next(&mut stream, PATIENCE).await;
    assert_eq!(text(&last), "c");
    last.ack().await.unwrap();
    nothing(&mut stream, QUIET).await;
    broker.close().await.unwrap();
}

#[tokio::test]
async fn requeue_after_waits_at_least_the_delay_and_keeps_counting() {
    let broker = broker(AmqpConfig::default()).await;
    let sub = Subscription::new(common::name("t"), "g");
    let mut stream = broker.subscribe(sub.clone()).await.unwrap();
    let sent = Message::new("later")
        .with_key("k")
        .with_header("h", "v")
        .unwrap();
    broker.publish(sub.topic(), sent.clone()).await.unwrap();
    let mut delivery = next(&mut stream, PATIENCE).await;
    for expected in 1..=3 {
        assert_eq!(delivery.message(), &sent, "the same message comes back");
        assert_eq!(delivery.delivery_count(), Some(expected));
        let delay = Duration::from_millis(300);
        let nacked = Instant::now();
        delivery
            .nack(Nack::RequeueAfter(delay))
            .await
            .expect("nack");
        delivery = next(&mut stream, PATIENCE).await;
        assert!(
            nacked.elapsed() >= delay,
            "came back after {:?}",
            nacked.elapsed()
        );
    }
    assert_eq!(delivery.delivery_count(), Some(4));
    delivery.nack(Nack::Requeue).await.unwrap();
    let delivery = next(&mut stream, PATIENCE).await;
    assert_eq!(delivery.delivery_count(), Some(5));
    delivery.ack().await.unwrap();
    nothing(&mut stream, QUIET).await;
    broker.close().await.unwrap();
}

#[tokio::test]
async fn short_delays_are_not_held_up_by_long_ones() {
    let broker = broker(AmqpConfig::default()).await;
    let sub = Subscription::new(common::name("t"), "g");
    let mut stream = broker.subscribe(sub.clone()).await.unwrap();
    broker
        .publish_batch(
            sub.topic(),
            vec![Message::new("slow"), Message::new("fast")],
        )
        .await
        .unwrap();
    let slow = next(&mut stream, PATIENCE).await;
    let fast = next(&mut stream, PATIENCE).await;
    assert_eq!((text(&slow), text(&fast)), ("slow".into(), "fast".into()));
    slow.nack(Nack::RequeueAfter(Duration::from_secs(60)))
        .await
        .unwrap();
    fast.nack(Nack::RequeueAfter(Duration::from_millis(100)))
        .await
        .unwrap();
    let back = next(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(text(&back), "fast");
    back.ack().await.unwrap();
    broker.close().await.unwrap();
}

#[tokio::test]
async fn dead_letter_without_a_dead_letter_group_fails_and_keeps_the_message() {
    let broker = broker(AmqpConfig::default()).await;
    let sub = Subscription::new(common::name("t"), "g");
    let mut stream = broker.subscribe(sub.clone()).await.unwrap();
    broker
        .publish(sub.topic(), Message::new("poison"))
        .await
        .unwrap();
    let poison = next(&mut stream, PATIENCE).await;
    let err = poison
        .nack(Nack::dead_letter("cannot handle"))
        .await
        .expect_err("no group on the dead-letter topic");
    assert!(
        matches!(amqp_source(&err), Some(AmqpError::Unroutable { .. })),
        "{err:?}"
    );
    let back = next(&mut stream, PATIENCE).await;
    assert_eq!(text(&back), "poison", "the message stays");
    // With a group on the dead-letter topic it moves.
    let dlq = Subscription::new(format!("{}.dlq", sub.topic()), "parking");
    broker.provision(&dlq).await.unwrap();
    back.nack(Nack::dead_letter("cannot handle")).await.unwrap();
    let mut dead = broker.subscribe(dlq).await.unwrap();
    let d = next(&mut dead, PATIENCE).await;
    assert_eq!(text(&d), "poison");
    d.ack().await.unwrap();
    nothing(&mut stream, QUIET).await;
    broker.close().await.unwrap();
}

#[tokio::test]
async fn classic_queues_work_without_delivery_counts() {
    let fixture = common::shared().await;
    let url = format!("{}?queue_type=classic", fixture.url());
    let broker = AmqpBroker::connect(&url).await.unwrap();
    let sub = Subscription::new(common::name("t"), "g");
    let mut stream = broker.subscribe(sub.clone()).await.unwrap();
    broker
        .publish_batch(
            sub.topic(),
            (0..3).map(|i| Message::new(i.to_string())).collect(),
        )
        .await
        .unwrap();
    let first = next(&mut stream, PATIENCE).await;
    assert_eq!(first.delivery_count(), None);
    first.nack(Nack::Requeue).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let d = next(&mut stream, PATIENCE).await;
        seen.push(text(&d));
        if text(&d) == "1" {
            d.nack(Nack::RequeueAfter(Duration::from_millis(50)))
                .await
                .unwrap();
        } else {
            d.ack().await.unwrap();
        }
    }
    let late = next(&mut stream, PATIENCE).await;
    assert_eq!(text(&late), "1");
    late.ack().await.unwrap();
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);
    nothing(&mut stream, QUIET).await;
    broker.close().await.unwrap();
}

#[tokio::test]
async fn single_active_consumer_keeps_order_across_a_takeover() {
    let broker = broker(AmqpConfig::default().single_active_consumer(true)).await;
    let sub = Subscription::new(common::name("t"), "g").prefetch(5);
    let mut active = broker.subscribe(sub.clone()).await.unwrap();
    let mut standby = broker.subscribe(sub.clone()).await.unwrap();
    broker
        .publish_batch(
            sub.topic(),
            (0..20).map(|i| Message::new(i.to_string())).collect(),
        )
        .await
        .unwrap();
    let mut acked = Vec::new();
    for _ in 0..8 {
        let d = next(&mut active, PATIENCE).await;
        acked.push(text(&d).parse::<u32>().unwrap());
        d.ack().await.unwrap();
    }
    nothing(&mut standby, QUIET).await;
    // The active consumer goes away holding unsettled messages.
    drop(active);
    for _ in 8..20 {
        let d = next(&mut standby, PATIENCE).await;
        acked.push(text(&d).parse::<u32>().unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(acked, (0..20).collect::<Vec<_>>());
    nothing(&mut standby, QUIET).await;
    broker.close().await.unwrap();
}

#[tokio::test]
async fn deliveries_handed_out_can_be_settled_after_their_stream_is_dropped() {
    let broker = broker(AmqpConfig::default()).await;
    let sub = Subscription::new(common::name("t"), "g").prefetch(4);
    let mut stream = broker.subscribe(sub.clone()).await.unwrap();
    broker
        .publish_batch(
            sub.topic(),
            (0..4).map(|i| Message::new(i.to_string())).collect(),
        )
        .await
        .unwrap();
    let first = next(&mut stream, PATIENCE).await;
    assert_eq!(text(&first), "0");
    drop(stream);
    first
        .ack()
        .await
        .expect("the channel stays open for handed-out deliveries");
    let mut stream = broker.subscribe(sub).await.unwrap();
    let mut rest = Vec::new();
    for _ in 0..3 {
        let d = next(&mut stream, PATIENCE).await;
        rest.push(text(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(rest, ["1", "2", "3"]);
    nothing(&mut stream, QUIET).await;
    broker.close().await.unwrap();
}

#[tokio::test]
async fn close_ends_streams_and_held_deliveries_come_back() {
    let fixture = common::shared().await;
    let sub = Subscription::new(common::name("t"), "g");
    let first = broker(AmqpConfig::default()).await;
    let mut stream = first.subscribe(sub.clone()).await.unwrap();
    first.publish(sub.topic(), Message::new("x")).await.unwrap();
    let held = next(&mut stream, PATIENCE).await;
    first.close().await.unwrap();
    assert!(futures::StreamExt::next(&mut stream).await.is_none());
    let err = held.ack().await.expect_err("ack after close");
    assert!(
        matches!(amqp_source(&err), Some(AmqpError::StaleDelivery)),
        "{err:?}"
    );
    let second = AmqpBroker::connect(fixture.url()).await.unwrap();
    let mut stream = second.subscribe(sub).await.unwrap();
    let again = next(&mut stream, PATIENCE).await;
    assert_eq!(text(&again), "x");
    again.ack().await.unwrap();
    second.close().await.unwrap();
}

#[tokio::test]
async fn messages_of_other_producers_are_delivered() {
    let fixture = common::shared().await;
    let broker = broker(AmqpConfig::default()).await;
    let sub = Subscription::new(common::name("t"), "g");
    let mut stream = broker.subscribe(sub.clone()).await.unwrap();

    let connection = Connection::connect(fixture.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert("attempt".into(), AMQPValue::LongInt(3));
    headers.insert("source".into(), AMQPValue::LongString("legacy".into()));
    let properties = BasicProperties::default()
        .with_message_id("legacy-42".into())
        .with_content_type("application/json".into())
        .with_correlation_id("flow-7".into())
        .with_timestamp(1_700_000_000)
        .with_headers(headers);
    channel
        .basic_publish(
            sub.topic().into(),
            "".into(),
            BasicPublishOptions::default(),
            b"{\"ok\":true}",
            properties,
        )
        .await
        .unwrap();
    let d = next(&mut stream, PATIENCE).await;
    let m = d.message();
    assert_eq!(m.id().to_string(), "legacy-42");
    assert_eq!(m.content_type(), Some("application/json"));
    assert_eq!(m.correlation_id(), Some("flow-7"));
    assert_eq!(
        m.timestamp(),
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    );
    assert_eq!(m.header("attempt"), Some("3"));
    assert_eq!(m.header("source"), Some("legacy"));
    assert_eq!(m.payload().as_ref(), b"{\"ok\":true}");
    d.ack().await.unwrap();
    connection.close(200, "done".into()).await.unwrap();
    broker.close().await.unwrap();
}

#[tokio::test]
async fn other_clients_read_the_amqp_properties() {
    let fixture = common::shared().await;
    let broker = broker(AmqpConfig::default()).await;
    let sub = Subscription::new(common::name("t"), "g");
    broker.provision(&sub).await.unwrap();
    let sent = Message::new("p")
        .with_content_type("text/plain")
        .with_correlation_id("c-1")
        .unwrap()
        .with_timestamp(SystemTime::now());
    broker.publish(sub.topic(), sent.clone()).await.unwrap();

    let connection = Connection::connect(fixture.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = format!("{}:g", sub.topic());
    let got = channel
        .basic_get(
            queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("a message");
    let p = &got.delivery.properties;
    assert_eq!(
        p.message_id().as_ref().map(|s| s.to_string()),
        Some(sent.id().to_string())
    );
    assert_eq!(
        p.content_type().as_ref().map(|s| s.to_string()).as_deref(),
        Some("text/plain")
    );
    assert_eq!(
        p.correlation_id()
            .as_ref()
            .map(|s| s.to_string())
            .as_deref(),
        Some("c-1")
    );
    assert_eq!(*p.timestamp(), Some(sent.timestamp_millis() / 1000));
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    connection.close(200, "done".into()).await.unwrap();
    broker.close().await.unwrap();
}

#[tokio::test]
async fn a_queue_of_another_type_is_a_typed_refusal() {
    let classic = broker(AmqpConfig::default().queue_type(QueueType::Classic)).await;
    let quorum = broker(AmqpConfig::default()).await;
    let sub = Subscription::new(common::name("t"), "g");
    classic.provision(&sub).await.unwrap();
    let err = quorum
        .provision(&sub)
        .await
        .expect_err("a quorum declaration of a classic queue is refused");
    assert!(matches!(err, Error::Broker { .. }), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    let cause = err.source().map(ToString::to_string).unwrap_or_default();
    assert!(cause.contains("PRECONDITION_FAILED"), "{cause}");
    // The refusal closed a channel, not the connection: the broker goes on.
    let other = Subscription::new(common::name("t"), "g");
    quorum
        .provision(&other)
        .await
        .expect("provision after a refusal");
    quorum
        .publish(other.topic(), Message::new("ok"))
        .await
        .unwrap();
    let mut stream = quorum.subscribe(other).await.unwrap();
    next(&mut stream, PATIENCE).await.ack().await.unwrap();
    classic.close().await.unwrap();
    quorum.close().await.unwrap();
}

#[tokio::test]
async fn payload_limit_and_topics_without_groups() {
    let broker = broker(AmqpConfig::default().max_payload(8)).await;
    let err = broker
        .publish(&common::name("t"), Message::new("123456789"))
        .await
        .expect_err("over the limit");
    assert!(
        matches!(err, Error::PayloadTooLarge { size: 9, limit: 8 }),
        "{err:?}"
    );
    // RabbitMQ takes (and drops) messages for a topic nobody subscribed to.
    broker
        .publish(&common::name("nobody"), Message::new("12345678"))
        .await
        .expect("publish without groups");
    broker.close().await.unwrap();
    let err = broker
        .publish(&common::name("t"), Message::new("x"))
        .await
        .expect_err("closed");
    assert!(matches!(err, Error::Closed(_)), "{err:?}");
}

/// Where a nacked message goes: classic queues put it back at its place,
/// and so do quorum queues with a delivery limit (RabbitMQ 4 gives every
/// quorum queue one, 20 by default; the test images run RabbitMQ 4.0;
/// without a limit, RabbitMQ 3's default, a quorum queue puts it at the
/// back). With prefetch 1, every message nacked once, then acked.
#[tokio::test]
async fn requeued_messages_keep_their_place() {
    let in_place: Vec<String> = (0..10)
        .flat_map(|i| [i.to_string(), i.to_string()])
        .collect();
    for (queue_type, want) in [
        (QueueType::Classic, in_place.clone()),
        (QueueType::Quorum, in_place),
    ] {
        let broker = broker(AmqpConfig::default().queue_type(queue_type)).await;
        let sub = Subscription::new(common::name("t"), "g").prefetch(1);
        let mut stream = broker.subscribe(sub.clone()).await.unwrap();
        broker
            .publish_batch(
                sub.topic(),
                (0..10).map(|i| Message::new(i.to_string())).collect(),
            )
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut nacked = std::collections::HashSet::new();
        while seen.len() < 20 {
            let d = next(&mut stream, PATIENCE).await;
            let seq = text(&d);
            seen.push(seq.clone());
            if nacked.insert(seq) {
                d.nack(Nack::Requeue).await.unwrap();
            } else {
                d.ack().await.unwrap();
            }
        }
        assert_eq!(seen, want, "{queue_type:?}");
        nothing(&mut stream, QUIET).await;
        broker.close().await.unwrap();
    }
}

/// RabbitMQ 4 gives every quorum queue a delivery limit (20 unless
/// configured) and removes a message returned more often. Such a message
/// goes to the topic's dead-letter topic, never away: a handler that keeps
/// requeueing one message sees it 20 times, then it waits in the
/// dead-letter topic's group, exactly once, with its id.
#[tokio::test]
async fn a_message_past_the_delivery_limit_goes_to_the_dead_letter_topic() {
    let broker = broker(AmqpConfig::default()).await;
    let sub = Subscription::new(common::name("t"), "g").prefetch(1);
    let dead = Subscription::new(
        courier_core::delivery::default_dead_letter_topic(sub.topic()),
        "g",
    );
    broker.provision(&dead).await.unwrap();
    let mut stream = broker.subscribe(sub.clone()).await.unwrap();
    let mut dead_stream = broker.subscribe(dead).await.unwrap();
    let message = Message::new("poison");
    let id = message.id().clone();
    broker.publish(sub.topic(), message).await.unwrap();
    let mut deliveries = 0;
    let moved = loop {
        tokio::select! {
            d = next(&mut stream, PATIENCE) => {
                deliveries += 1;
                assert!(deliveries <= 100, "requeued {deliveries} times and still delivered");
                d.nack(Nack::Requeue).await.unwrap();
            }
            d = next(&mut dead_stream, PATIENCE) => break d,
        }
    };
    eprintln!("delivered {deliveries} times, then dead-lettered");
    assert_eq!(moved.message().id(), &id);
    assert_eq!(text(&moved), "poison");
    assert_eq!(deliveries, 21, "RabbitMQ 4's default limit: 20 returns");
    moved.ack().await.unwrap();
    nothing(&mut stream, QUIET).await;
    nothing(&mut dead_stream, QUIET).await;
    broker.close().await.unwrap();
}
