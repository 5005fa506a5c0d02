//! Reserved headers of a foreign producer's record are not trusted: a raw
//! rdkafka record with `courier-correlation-id` and `courier-whatever`
//! reaches handlers without them (and without a header value that is not
//! UTF-8); a courier message keeps its own.

use std::time::Duration;

use courier_core::prelude::*;
use courier_core::{DeliveryStream, Message, Subscription};
use courier_kafka::KafkaBroker;
use courier_testkit::fixtures::{self, unique_name};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Group joins on the test broker take seconds.
const PATIENCE: Duration = Duration::from_secs(60);

async fn next(stream: &mut DeliveryStream) -> courier_core::Delivery {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("a delivery in time")
        .expect("open")
        .expect("delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_reserved_headers_are_not_trusted_and_courier_keeps_its_own() {
    let server = fixtures::kafka().await.expect("kafka fixture");
    let broker = KafkaBroker::connect(server.url()).await.expect("connect");
    let sub = Subscription::new(unique_name("foreign-headers"), unique_name("readers"));
    broker.provision(&sub).await.expect("provision");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", server.address())
        .create()
        .expect("raw producer");
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "courier-correlation-id",
            value: Some("forged"),
        })
        .insert(Header {
            key: "courier-whatever",
            value: Some("x"),
        })
        .insert(Header {
            key: "plain",
            value: Some("kept"),
        })
        .insert(Header {
            key: "binary",
            value: Some(&[0xff_u8, 0xfe][..]),
        });
    producer
        .send(
            FutureRecord::<(), _>::to(sub.topic())
                .payload("foreign")
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .expect("raw produce");
    let sent = Message::new("courier")
        .with_correlation_id("flow-1")
        .unwrap()
        .with_causation_id("cause-1")
        .unwrap()
        .with_header("plain", "kept")
        .unwrap();
    broker
        .publish(sub.topic(), sent.clone())
        .await
        .expect("publish");

    let mut stream = broker.subscribe(sub.clone()).await.expect("subscribe");
    let foreign = next(&mut stream).await;
    let m = foreign.message();
    assert_eq!(m.payload().as_ref(), b"foreign");
    assert!(
        m.id().to_string().starts_with(sub.topic()),
        "a foreign record's id: {:?}",
        m.id()
    );
    assert_eq!(m.correlation_id(), None, "a forged correlation id");
    assert_eq!(m.header("courier-correlation-id"), None);
    assert_eq!(m.header("courier-whatever"), None);
    assert_eq!(m.header("binary"), None, "not UTF-8: left out");
    assert_eq!(m.header("plain"), Some("kept"));
    foreign.ack().await.expect("ack");

    let own = next(&mut stream).await;
    let m = own.message();
    assert_eq!(m.id(), sent.id());
    assert_eq!(m.correlation_id(), Some("flow-1"));
    assert_eq!(m.causation_id(), Some("cause-1"));
    assert_eq!(m.header("plain"), Some("kept"));
    own.ack().await.expect("ack");
    broker.close().await.expect("close");
}
