//! Reserved headers of a foreign producer's message are not trusted: a raw
//! lapin publish with `courier-correlation-id` and `courier-whatever`
//! reaches handlers without them (and without a nested table, which
//! courier cannot carry); a courier message keeps its own.

mod common;

use std::time::Duration;

use common::next;
use courier_amqp::AmqpBroker;
use courier_core::prelude::*;
use courier_core::{Message, Subscription};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn foreign_reserved_headers_are_not_trusted_and_courier_keeps_its_own() {
    let fixture = common::shared().await;
    let broker = AmqpBroker::connect(fixture.url()).await.expect("connect");
    let sub = Subscription::new(common::name("t"), "g");
    let mut stream = broker.subscribe(sub.clone()).await.unwrap();

    let connection = Connection::connect(fixture.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "courier-correlation-id".into(),
        AMQPValue::LongString("forged".into()),
    );
    headers.insert("courier-whatever".into(), AMQPValue::LongString("x".into()));
    headers.insert("plain".into(), AMQPValue::LongString("kept".into()));
    headers.insert(
        "nested".into(),
        AMQPValue::FieldTable(FieldTable::default()),
    );
    // The generic properties courier writes too: they do not make it
    // courier's message.
    let properties = BasicProperties::default()
        .with_message_id("legacy-1".into())
        .with_timestamp(1_700_000_000)
        .with_headers(headers);
    channel
        .basic_publish(
            sub.topic().into(),
            "".into(),
            BasicPublishOptions::default(),
            b"foreign",
            properties,
        )
        .await
        .unwrap();
    let sent = Message::new("courier")
        .with_correlation_id("flow-1")
        .unwrap()
        .with_causation_id("cause-1")
        .unwrap()
        .with_header("plain", "kept")
        .unwrap();
    broker.publish(sub.topic(), sent.clone()).await.unwrap();

    let foreign = next(&mut stream, PATIENCE).await;
    let m = foreign.message();
    assert_eq!(m.payload().as_ref(), b"foreign");
    assert_eq!(
        m.id().to_string(),
        "legacy-1",
        "message_id is the broker's own"
    );
    assert_eq!(m.correlation_id(), None, "a forged correlation id");
    assert_eq!(m.header("courier-correlation-id"), None);
    assert_eq!(m.header("courier-whatever"), None);
    assert_eq!(m.header("nested"), None, "a nested table: left out");
    assert_eq!(m.header("plain"), Some("kept"));
    foreign.ack().await.unwrap();

    let own = next(&mut stream, PATIENCE).await;
    let m = own.message();
    assert_eq!(m.id(), sent.id());
    assert_eq!(m.correlation_id(), Some("flow-1"));
    assert_eq!(m.causation_id(), Some("cause-1"));
    assert_eq!(m.header("plain"), Some("kept"));
    assert_eq!(m.timestamp_millis(), sent.timestamp_millis());
    own.ack().await.unwrap();
    connection.close(200, "done".into()).await.unwrap();
    broker.close().await.unwrap();
}
