//! The consumer runtime on JetStream when the dead-letter stream refuses
//! (full, discarding new messages): the poison message is held and handled
//! once, its copy published again no more often than the backoff allows,
//! and taken exactly once when the stream has room again.

mod full_stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use courier_core::delivery::DLQ_REASON;
use courier_core::runtime::Consumer;
use courier_core::{Message, Subscriber, Subscription};
use courier_nats::NatsBroker;
use courier_testkit::dead_letter_cases::{most_dead_letter_tries_within, poison_handler};
use futures::StreamExt;

/// Waits until `done` holds, for at most 20 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dead_letter_stream_holds_the_message_until_it_has_room() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    let topic = courier_testkit::fixtures::unique_name("runtime-refused");
    let dlq_topic = format!("{topic}.dlq");
    let js = async_nats::jetstream::new(broker.client().clone());
    let dlq_stream = full_stream::full_stream(&js, &dlq_topic).await;

    let calls = Arc::new(AtomicU32::new(0));
    let handler = poison_handler(&calls, "poison");
    let began = Instant::now();
    let running = Consumer::builder(
        Arc::new(broker.clone()),
        Subscription::new(&topic, "billing"),
        handler,
    )
    .start()
    .await
    .expect("start");
    let poison = Message::new("poison");
    let poison_id = poison.id().clone();
    courier_core::Publisher::publish(&broker, &topic, poison)
        .await
        .expect("publish");

    let metrics = running.metrics();
    until("three refused copies or a loop", || {
        metrics.snapshot().dead_letter_failures >= 3 || calls.load(Ordering::SeqCst) > 1
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "handled once, not looped");
    assert_eq!(running.status().in_flight, 1, "the message is held");

    dlq_stream.purge().await.expect("purge");
    until("the copy taken", || metrics.snapshot().dead_lettered == 1).await;
    let elapsed = began.elapsed();
    let stats = running.shutdown().await.expect("shutdown");
    let allowed = most_dead_letter_tries_within(elapsed);
    assert!(
        (3..=allowed).contains(&stats.dead_letter_failures),
        "{} refused publishes in {elapsed:?}; the backoff allows at most {allowed}",
        stats.dead_letter_failures
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "handled once in all");

    // The runtime's own group on the dead-letter topic has exactly the copy
    // (the filler was purged before the copy went in).
    let mut dead = Subscriber::subscribe(&broker, Subscription::new(&dlq_topic, "billing"))
        .await
        .expect("subscribe dlq");
    let copy = tokio::time::timeout(Duration::from_secs(20), dead.next())
        .await
        .expect("the copy in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(copy.message().id(), &poison_id);
    assert_eq!(copy.message().header(DLQ_REASON), Some("poison"));
    copy.ack().await.expect("ack");
    let again = tokio::time::timeout(Duration::from_millis(700), dead.next()).await;
    assert!(again.is_err(), "one copy: {again:?}");
    courier_core::Close::close(&broker).await.expect("close");
}
