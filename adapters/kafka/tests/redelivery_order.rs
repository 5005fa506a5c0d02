//! A nacked record comes back before the records fetched after it, as the
//! crate documents (against the real broker): with records already
//! fetched and waiting in the subscription's buffer, a `Nack::Requeue` puts
//! its record at the front, not behind them.

use courier_core::prelude::*;
use std::time::Duration;

use courier_core::{Message, Nack, Subscription};
use courier_kafka::KafkaBroker;
use courier_testkit::deliveries::{next_within, seq_of};
use courier_testkit::fixtures::{self, unique_name};

const MESSAGES: usize = 20;
/// The first delivery waits for the group join and assignment too.
const JOIN: Duration = Duration::from_secs(60);
/// Later deliveries are already fetched.
const NEXT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_record_comes_back_before_later_ones() {
    let server = fixtures::kafka().await.expect("kafka fixture");
    let broker = KafkaBroker::connect(server.url()).await.expect("connect");
    let sub = Subscription::new(unique_name("order"), unique_name("order-group")).prefetch(64);
    broker.provision(&sub).await.expect("provision");
    let batch = (0..MESSAGES).map(|i| Message::new(i.to_string())).collect();
    broker
        .publish_batch(sub.topic(), batch)
        .await
        .expect("publish");

    let mut stream = broker.subscribe(sub).await.expect("subscribe");
    let first = next_within(&mut stream, JOIN).await;
    let second = next_within(&mut stream, NEXT).await;
    assert_eq!((seq_of(first.message()), seq_of(second.message())), (0, 1));
    first.nack(Nack::Requeue).await.expect("nack");
    second.ack().await.expect("ack");

    let mut order = Vec::new();
    for _ in 1..MESSAGES {
        let delivery = next_within(&mut stream, NEXT).await;
        order.push(seq_of(delivery.message()));
        delivery.ack().await.expect("ack");
    }
    let expected: Vec<usize> = std::iter::once(0).chain(2..MESSAGES).collect();
    assert_eq!(
        order, expected,
        "the nacked record first, then the rest in order"
    );
    drop(stream);
    broker.close().await.expect("close");
}
