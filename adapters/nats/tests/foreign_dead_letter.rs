//! A message courier cannot decode whose dead-letter copy is refused
//! comes back after a growing delay (never in a loop), keeps its
//! `Nats-Msg-Id` as id, and is dead-lettered exactly once when the
//! dead-letter stream has room again.

mod full_stream;

use std::time::{Duration, Instant};

use courier_core::delivery::DLQ_REASON;
use courier_core::{StartPosition, Subscriber, Subscription};
use courier_nats::{NatsBroker, consumer_name, stream_name};
use courier_testkit::dead_letter_cases::most_dead_letter_tries_within;
use futures::StreamExt;

#[tokio::test]
async fn a_refused_foreign_dead_letter_backs_off_and_arrives_once() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    let topic = courier_testkit::fixtures::unique_name("foreign-refused");
    let dlq_topic = format!("{topic}.dlq");
    let sub = Subscription::new(&topic, "readers");
    Subscriber::provision(&broker, &sub)
        .await
        .expect("provision");

    // The dead-letter stream holds one message and refuses more.
    let js = async_nats::jetstream::new(broker.client().clone());
    let dlq_stream = full_stream::full_stream(&js, &dlq_topic).await;

    // A foreign message with an id header courier refuses (300 bytes) and
    // its producer's `Nats-Msg-Id`.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("courier-id", "x".repeat(300));
    headers.insert("Nats-Msg-Id", "foreign-7");
    js.publish_with_headers(topic.clone(), headers, "broken".into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    let began = Instant::now();
    let mut stream = Subscriber::subscribe(&broker, sub)
        .await
        .expect("subscribe");
    let topic_stream = js.get_stream(stream_name(&topic)).await.expect("stream");
    let delivered = || async {
        let info = topic_stream
            .consumer_info(consumer_name("readers"))
            .await
            .expect("consumer info");
        info.delivered.consumer_sequence
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = delivered().await;
    while seen < 4 {
        assert!(Instant::now() < deadline, "only {seen} deliveries in 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = delivered().await;
    }
    let elapsed = began.elapsed();
    let allowed = most_dead_letter_tries_within(elapsed);
    assert!(
        seen <= allowed,
        "{seen} deliveries in {elapsed:?}; the backoff allows at most {allowed}"
    );
    let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(next.is_err(), "it never reaches handlers: {next:?}");

    // Room again: the next delivery's copy is taken.
    dlq_stream.purge().await.expect("purge");
    let dlq = Subscription::new(&dlq_topic, "ops").start_from(StartPosition::Earliest);
    let mut dead = Subscriber::subscribe(&broker, dlq)
        .await
        .expect("subscribe dlq");
    let copy = tokio::time::timeout(Duration::from_secs(20), dead.next())
        .await
        .expect("dead letter in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(copy.message().payload().as_ref(), b"broken");
    assert_eq!(copy.message().id().to_string(), "foreign-7");
    let reason = copy.message().header(DLQ_REASON).expect("reason");
    assert!(reason.starts_with("undecodable NATS headers"), "{reason}");
    copy.ack().await.expect("ack");
    let again = tokio::time::timeout(Duration::from_millis(700), dead.next()).await;
    assert!(again.is_err(), "one copy: {again:?}");
    let info = topic_stream
        .consumer_info(consumer_name("readers"))
        .await
        .expect("consumer info");
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "the original was settled"
    );
    courier_core::Close::close(&broker).await.expect("close");
}
