//! The first use of a topic costs one exchange declaration, however many
//! publishes race for it (runs against the RabbitMQ fixture). The topic
//! has no group, so every publish is returned unroutable: each of the
//! pipelined publishes gets its own return, none is reported confirmed.

use courier_core::{BrokerErrorKind, Message, Publisher};
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
    let not_unroutable: Vec<_> = outcomes
        .iter()
        .filter(|outcome| match outcome {
            Err(e) => courier_core::unroutable::topic(e) != Some(topic.as_str()),
            Ok(()) => true,
        })
        .collect();
    assert!(
        not_unroutable.is_empty(),
        "{} of {RACING_PUBLISHES} not unroutable, first: {:?}",
        not_unroutable.len(),
        not_unroutable.first()
    );
    let session_after = publisher.link().session().await.expect("session");
    assert_eq!(
        session_after.generation, session.generation,
        "the connection was replaced during the test"
    );
    assert_eq!(session.exchange_declarations() - before, 1);
    // The topic is known now: more publishes declare nothing.
    let again = publisher.publish(&topic, Message::new("again")).await;
    assert_eq!(
        again.expect_err("still no group").broker_kind(),
        Some(BrokerErrorKind::Unroutable)
    );
    assert_eq!(session.exchange_declarations() - before, 1);
    courier_core::Close::close(&publisher).await.expect("close");
}
