//! The first use of a topic costs one exchange declaration, however many
//! publishes race for it (runs against the RabbitMQ fixture).

use courier_core::{Message, Publisher};
use courier_testkit::fixtures::{rabbitmq, unique_name};

use crate::{AmqpConfig, AmqpPublisher};

const RACING_PUBLISHES: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_publishes_declare_the_exchange_once() {
    let fixture = rabbitmq().await.expect("RabbitMQ fixture");
    let publisher = AmqpPublisher::connect(fixture.url(), AmqpConfig::default())
        .await
        .expect("connect");
    let session = publisher.link().session().await.expect("session");
    let before = session.exchange_declarations();
    let topic = unique_name("first-publish");
    let publishes = (0..RACING_PUBLISHES).map(|i| {
        let message = Message::new(format!("m{i}"));
        publisher.publish(&topic, message)
    });
    let outcomes = futures::future::join_all(publishes).await;
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    let session_after = publisher.link().session().await.expect("session");
    assert_eq!(
        session_after.generation, session.generation,
        "the connection was replaced during the test"
    );
    assert_eq!(session.exchange_declarations() - before, 1);
    // The topic is known now: more publishes declare nothing.
    publisher
        .publish(&topic, Message::new("again"))
        .await
        .expect("publish");
    assert_eq!(session.exchange_declarations() - before, 1);
    courier_core::Close::close(&publisher).await.expect("close");
}
