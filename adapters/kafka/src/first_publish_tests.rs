//! The first use of a topic looks it up (and creates it) once, however
//! many publishes race for it (runs against the Kafka fixture).

use courier_core::{Message, Publisher};
use courier_testkit::fixtures::{kafka, unique_name};

use crate::KafkaBroker;

const RACING_PUBLISHES: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_publishes_create_the_topic_once() {
    let fixture = kafka().await.expect("Kafka fixture");
    let broker = KafkaBroker::connect(fixture.url()).await.expect("connect");
    let topics = broker.inner.producer.topics.clone();
    let before = topics.look_ups();
    let topic = unique_name("first-publish");
    let publishes =
        (0..RACING_PUBLISHES).map(|i| broker.publish(&topic, Message::new(format!("m{i}"))));
    let outcomes = futures::future::join_all(publishes).await;
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(topics.look_ups() - before, 1);
    broker
        .publish(&topic, Message::new("again"))
        .await
        .expect("publish");
    assert_eq!(topics.look_ups() - before, 1);
    courier_core::Close::close(&broker).await.expect("close");
}
