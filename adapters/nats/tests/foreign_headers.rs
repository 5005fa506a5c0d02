//! Reserved headers of a foreign producer's message are not trusted: a raw
//! JetStream publish with `courier-correlation-id` and `courier-whatever`
//! reaches handlers without them; a courier message keeps its own.

use courier_core::{Publisher, Subscriber, Subscription};
use courier_nats::NatsBroker;
use courier_testkit::deliveries::next_within;
use courier_testkit::foreign_headers::{
    FORGED_HEADERS, assert_courier_fields_kept, assert_reserved_not_trusted, courier_message,
};
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(15);

#[tokio::test]
async fn foreign_reserved_headers_are_not_trusted_and_courier_keeps_its_own() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    let topic = courier_testkit::fixtures::unique_name("foreign-headers");
    let sub = Subscription::new(&topic, "readers");
    Subscriber::provision(&broker, &sub)
        .await
        .expect("provision");

    let js = async_nats::jetstream::new(broker.client().clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "foreign-1");
    for (name, value) in FORGED_HEADERS {
        headers.insert(name, value);
    }
    js.publish_with_headers(topic.clone(), headers, "foreign".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let sent = courier_message();
    Publisher::publish(&broker, &topic, sent.clone())
        .await
        .expect("publish");

    let mut stream = Subscriber::subscribe(&broker, sub)
        .await
        .expect("subscribe");
    let foreign = next_within(&mut stream, PATIENCE).await;
    let m = foreign.message();
    assert_eq!(m.payload().as_ref(), b"foreign");
    assert_eq!(
        m.id().to_string(),
        "foreign-1",
        "Nats-Msg-Id is the broker's own"
    );
    assert_reserved_not_trusted(m);
    foreign.ack().await.expect("ack");

    let own = next_within(&mut stream, PATIENCE).await;
    assert_courier_fields_kept(own.message(), &sent);
    own.ack().await.expect("ack");
    courier_core::Close::close(&broker).await.expect("close");
}
