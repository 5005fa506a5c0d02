//! Commit metadata on librdkafka's mock cluster, which keeps it as Apache
//! Kafka does (tansu, the broker of the other tests, drops it; there the
//! companion topic carries the settled offsets instead).
//!
//! An ack of a later message while an earlier one is nacked: the position
//! stays at the nacked one and the commit's metadata records the later one
//! as settled, so the next consumer of the group gets only the nacked one.

use courier_core::prelude::*;
use std::time::Duration;

use courier_core::{Message, Nack, Subscription};
use courier_kafka::KafkaBroker;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

async fn next(stream: &mut courier_core::DeliveryStream) -> courier_core::Delivery {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("a delivery within 20 s")
        .expect("stream open")
        .expect("delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_metadata_keeps_acks_above_a_nacked_message() {
    let mock = MockCluster::new(1).expect("mock cluster");
    // The mock cluster does not implement topic creation through the admin
    // API; create the topics it will see directly.
    for topic in ["orders", "orders.courier-settled"] {
        mock.create_topic(topic, 1, 1).expect("create topic");
    }
    let url = format!("kafka://{}", mock.bootstrap_servers());
    let sub = Subscription::new("orders", "billing").prefetch(10);

    let first = KafkaBroker::connect(&url).await.expect("connect");
    let mut stream = first.subscribe(sub.clone()).await.expect("subscribe");
    first
        .publish_batch(
            sub.topic(),
            (0..3).map(|i| Message::new(i.to_string())).collect(),
        )
        .await
        .expect("publish");
    let a = next(&mut stream).await;
    let b = next(&mut stream).await;
    let c = next(&mut stream).await;
    let a_id = a.message().id().clone();
    a.nack(Nack::Requeue).await.expect("nack");
    b.ack().await.expect("ack");
    c.ack().await.expect("ack");
    first.close().await.expect("close");
    drop(stream);

    // The group's commit: position at the nacked message, the two acked
    // ones above it in the metadata.
    let bootstrap = mock.bootstrap_servers();
    let committed = tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "billing")
            .create()
            .expect("consumer");
        let mut list = TopicPartitionList::new();
        list.add_partition("orders", 0);
        let committed = reader
            .committed_offsets(list, Duration::from_secs(10))
            .expect("committed offsets");
        let element = committed.find_partition("orders", 0).expect("partition");
        (element.offset(), element.metadata().to_owned())
    })
    .await
    .expect("reader");
    assert_eq!(committed, (Offset::Offset(0), "courier1:0:1-2".to_owned()));

    let second = KafkaBroker::connect(&url).await.expect("connect");
    let mut stream = second.subscribe(sub).await.expect("subscribe");
    let again = next(&mut stream).await;
    assert_eq!(again.message().id(), &a_id, "the nacked message comes back");
    again.ack().await.expect("ack");
    let nothing = tokio::time::timeout(Duration::from_secs(2), stream.next()).await;
    assert!(nothing.is_err(), "acked messages came back: {nothing:?}");
    second.close().await.expect("close");
}
