//! A subscription working through a backlog pulls in batches of at least
//! half its prefetch, not one message per settlement: every pull request
//! the server receives for the group's consumer is watched on its
//! JetStream API subject.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{DeliveryStream, Message, Publisher, Subscriber, Subscription};
use courier_nats::NatsBroker;
use courier_testkit::deliveries::next_within;
use courier_testkit::fixtures::BrokerFixture;
use futures::StreamExt;

const PATIENCE: Duration = Duration::from_secs(15);
const PREFETCH: u16 = 10;
const MESSAGES: usize = 100;

/// A group's queue of `m0`, `m1`, … waiting on a new topic.
struct Backlog {
    _server: Arc<BrokerFixture>,
    broker: NatsBroker,
    topic: String,
    subscription: Subscription,
}

impl Backlog {
    /// `count` messages published to a new topic whose group (provisioned
    /// first, so it holds them all) reads with `prefetch`.
    async fn new(kind: &str, prefetch: u16, count: usize) -> Self {
        let server = courier_testkit::fixtures::nats()
            .await
            .expect("nats fixture");
        let broker = NatsBroker::connect(server.url()).await.expect("connect");
        let topic = courier_testkit::fixtures::unique_name(kind);
        let subscription = Subscription::new(&topic, "readers").prefetch(prefetch);
        Subscriber::provision(&broker, &subscription)
            .await
            .expect("provision");
        let messages = (0..count).map(|i| Message::new(format!("m{i}"))).collect();
        Publisher::publish_batch(&broker, &topic, messages)
            .await
            .expect("publish");
        Backlog {
            _server: server,
            broker,
            topic,
            subscription,
        }
    }

    async fn subscribe(&self) -> DeliveryStream {
        Subscriber::subscribe(&self.broker, self.subscription.clone())
            .await
            .expect("subscribe")
    }

    async fn close(self, stream: DeliveryStream) {
        drop(stream);
        courier_core::Close::close(&self.broker)
            .await
            .expect("close");
    }
}

#[tokio::test]
async fn a_backlog_is_pulled_in_batches_of_half_the_prefetch_or_more() {
    let backlog = Backlog::new("pulls", PREFETCH, MESSAGES).await;

    // Pull requests for any consumer of the topic's stream.
    let pulls_subject = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.>",
        courier_nats::stream_name(&backlog.topic)
    );
    let mut pulls = backlog
        .broker
        .client()
        .subscribe(pulls_subject)
        .await
        .expect("watch pull requests");
    backlog.broker.client().flush().await.expect("flush");

    // One at a time, each ack awaited: the loop that used to pull one
    // message per ack once the prefetch was full.
    let mut stream = backlog.subscribe().await;
    for i in 0..MESSAGES {
        let delivery = next_within(&mut stream, PATIENCE).await;
        assert_eq!(
            delivery.message().payload().as_ref(),
            format!("m{i}").as_bytes()
        );
        delivery.ack().await.expect("ack");
    }
    backlog.close(stream).await;

    let mut sizes = Vec::new();
    while let Ok(Some(pull)) = tokio::time::timeout(Duration::from_millis(500), pulls.next()).await
    {
        let request: serde_json::Value =
            serde_json::from_slice(&pull.payload).expect("a pull request is JSON");
        sizes.push(
            request["batch"]
                .as_u64()
                .expect("a pull request has a batch size"),
        );
    }
    let refill = u64::from(PREFETCH / 2);
    assert!(
        sizes
            .iter()
            .all(|&size| (refill..=u64::from(PREFETCH)).contains(&size)),
        "every pull asks for {refill} to {PREFETCH} messages: {sizes:?}"
    );
    let asked: u64 = sizes.iter().sum();
    assert!(
        asked >= MESSAGES as u64,
        "the pulls seen asked for {asked} messages, fewer than the {MESSAGES} delivered \
         (pull requests missed by the watch): {sizes:?}"
    );
}

/// Handlers holding most of the prefetch are not made to wait for half of
/// it to be settled: once the stream holds nothing, one settlement brings
/// the next message.
#[tokio::test]
async fn with_nothing_waiting_one_settlement_brings_the_next_message() {
    const HELD: u16 = 4;
    let backlog = Backlog::new("pulls-held", HELD, 10).await;

    let mut stream = backlog.subscribe().await;
    let mut held = Vec::new();
    for _ in 0..HELD {
        held.push(next_within(&mut stream, PATIENCE).await);
    }
    // The whole prefetch is out and the stream holds nothing: settling one
    // leaves room for one message, less than half the prefetch.
    held.remove(0).ack().await.expect("ack");
    let next = next_within(&mut stream, PATIENCE).await;
    assert_eq!(next.message().payload().as_ref(), b"m4");
    next.ack().await.expect("ack");
    for delivery in held {
        delivery.ack().await.expect("ack");
    }
    backlog.close(stream).await;
}

/// A reader that collects more than half its prefetch before settling any
/// (a batch) gets the rest of its batch: taking the last pulled message
/// lets the pull loop pull the room that is left.
#[tokio::test]
async fn a_reader_collecting_a_batch_before_settling_gets_all_of_it() {
    const BATCH: usize = 9;
    let backlog = Backlog::new("pulls-batch", PREFETCH, 40).await;

    let mut stream = backlog.subscribe().await;
    let mut next = 0;
    for _ in 0..4 {
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            let delivery = next_within(&mut stream, PATIENCE).await;
            assert_eq!(
                delivery.message().payload().as_ref(),
                format!("m{next}").as_bytes()
            );
            next += 1;
            batch.push(delivery);
        }
        for delivery in batch {
            delivery.ack().await.expect("ack");
        }
        // Lets the pull loop (on this test's one thread) look at its room
        // before the next batch is taken: it then finds messages still in
        // the stream and waits, which is when taking them must wake it.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(next, 4 * BATCH);
    backlog.close(stream).await;
}
