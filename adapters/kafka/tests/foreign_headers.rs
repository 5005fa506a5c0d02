//! Reserved headers of a foreign producer's record are not trusted: a raw
//! rdkafka record with `courier-correlation-id` and `courier-whatever`
//! reaches handlers without them (and without a header value that is not
//! UTF-8), with the record's timestamp; a courier message keeps its own.

use std::time::Duration;

use courier_core::Subscription;
use courier_core::prelude::*;
use courier_kafka::KafkaBroker;
use courier_testkit::deliveries::next_within;
use courier_testkit::fixtures::{self, unique_name};
use courier_testkit::foreign_headers::{
    FORGED_HEADERS, assert_courier_fields_kept, assert_reserved_not_trusted, courier_message,
};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The timestamp of the foreign record (milliseconds since the epoch).
const FOREIGN_TIMESTAMP_MS: i64 = 1_700_000_000_123;

/// Group joins on the test broker take seconds.
const PATIENCE: Duration = Duration::from_secs(60);

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
    let mut headers = OwnedHeaders::new();
    for (key, value) in FORGED_HEADERS {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    let headers = headers.insert(Header {
        key: "binary",
        value: Some(&[0xff_u8, 0xfe][..]),
    });
    producer
        .send(
            FutureRecord::<(), _>::to(sub.topic())
                .payload("foreign")
                .timestamp(FOREIGN_TIMESTAMP_MS)
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .expect("raw produce");
    let sent = courier_message();
    broker
        .publish(sub.topic(), sent.clone())
        .await
        .expect("publish");

    let mut stream = broker.subscribe(sub.clone()).await.expect("subscribe");
    let foreign = next_within(&mut stream, PATIENCE).await;
    let m = foreign.message();
    assert_eq!(m.payload().as_ref(), b"foreign");
    assert!(
        m.id().to_string().starts_with(sub.topic()),
        "a foreign record's id: {:?}",
        m.id()
    );
    assert_eq!(
        m.timestamp_millis(),
        FOREIGN_TIMESTAMP_MS as u64,
        "a foreign record's timestamp"
    );
    assert_reserved_not_trusted(m);
    assert_eq!(m.header("binary"), None, "not UTF-8: left out");
    foreign.ack().await.expect("ack");

    let own = next_within(&mut stream, PATIENCE).await;
    assert_courier_fields_kept(own.message(), &sent);
    own.ack().await.expect("ack");
    broker.close().await.expect("close");
}
