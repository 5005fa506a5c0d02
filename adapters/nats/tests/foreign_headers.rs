//! Reserved headers of a foreign producer's message are not trusted: a raw
//! JetStream publish with `courier-correlation-id` and `courier-whatever`
//! reaches handlers without them; a courier message keeps its own.

use courier_core::{Message, Publisher, Subscriber, Subscription};
use courier_nats::NatsBroker;
use futures::StreamExt;
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
    headers.insert("courier-correlation-id", "forged");
    headers.insert("courier-whatever", "x");
    headers.insert("plain", "kept");
    js.publish_with_headers(topic.clone(), headers, "foreign".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let sent = Message::new("courier")
        .with_correlation_id("flow-1")
        .unwrap()
        .with_causation_id("cause-1")
        .unwrap()
        .with_header("plain", "kept")
        .unwrap();
    Publisher::publish(&broker, &topic, sent.clone())
        .await
        .expect("publish");

    let mut stream = Subscriber::subscribe(&broker, sub)
        .await
        .expect("subscribe");
    let foreign = next(&mut stream).await;
    let m = foreign.message();
    assert_eq!(m.payload().as_ref(), b"foreign");
    assert_eq!(
        m.id().to_string(),
        "foreign-1",
        "Nats-Msg-Id is the broker's own"
    );
    assert_eq!(m.correlation_id(), None, "a forged correlation id");
    assert_eq!(m.header("courier-correlation-id"), None);
    assert_eq!(m.header("courier-whatever"), None);
    assert_eq!(m.header("plain"), Some("kept"));
    foreign.ack().await.expect("ack");

    let own = next(&mut stream).await;
    let m = own.message();
    assert_eq!(m.id(), sent.id());
    assert_eq!(m.correlation_id(), Some("flow-1"));
    assert_eq!(m.causation_id(), Some("cause-1"));
    assert_eq!(m.header("plain"), Some("kept"));
    assert_eq!(m.timestamp_millis(), sent.timestamp_millis());
    own.ack().await.expect("ack");
    courier_core::Close::close(&broker).await.expect("close");
}

async fn next(stream: &mut courier_core::DeliveryStream) -> courier_core::Delivery {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("a delivery in time")
        .expect("open")
        .expect("delivery")
}
