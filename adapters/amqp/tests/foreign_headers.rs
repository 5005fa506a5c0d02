//! Reserved headers of a foreign producer's message are not trusted: a raw
//! lapin publish with `courier-correlation-id` and `courier-whatever`
//! reaches handlers without them (and without a nested table, which
//! courier cannot carry); a courier message keeps its own.

mod common;

use std::time::Duration;

use common::next;
use courier_amqp::AmqpBroker;
use courier_core::Subscription;
use courier_core::prelude::*;
use courier_testkit::foreign_headers::{
    FORGED_HEADERS, assert_courier_fields_kept, assert_reserved_not_trusted, courier_message,
};
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
    for (name, value) in FORGED_HEADERS {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
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
    let sent = courier_message();
    broker.publish(sub.topic(), sent.clone()).await.unwrap();

    let foreign = next(&mut stream, PATIENCE).await;
    let m = foreign.message();
    assert_eq!(m.payload().as_ref(), b"foreign");
    assert_eq!(
        m.id().to_string(),
        "legacy-1",
        "message_id is the broker's own"
    );
    assert_reserved_not_trusted(m);
    assert_eq!(m.header("nested"), None, "a nested table: left out");
    foreign.ack().await.unwrap();

    let own = next(&mut stream, PATIENCE).await;
    assert_courier_fields_kept(own.message(), &sent);
    own.ack().await.unwrap();
    connection.close(200, "done".into()).await.unwrap();
    broker.close().await.unwrap();
}
