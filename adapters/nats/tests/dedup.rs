//! A message published again with the same id within the duplicate window
//! is stored once.

use courier_core::prelude::*;
use courier_core::{Message, Publisher, Subscriber, Subscription};
use courier_nats::NatsBroker;
use futures::StreamExt;

#[tokio::test]
async fn republished_message_id_is_stored_once() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    let topic = courier_testkit::fixtures::unique_name("dedup");
    let sub = Subscription::new(&topic, "readers").prefetch(10);
    let mut stream = Subscriber::subscribe(&broker, sub)
        .await
        .expect("subscribe");

    let original = Message::new("once");
    for _ in 0..3 {
        Publisher::publish(&broker, &topic, original.clone())
            .await
            .expect("publish");
    }
    Publisher::publish(&broker, &topic, Message::new("other"))
        .await
        .expect("publish");

    let first = stream.next().await.expect("open").expect("delivery");
    assert_eq!(first.message().id(), original.id());
    first.ack().await.expect("ack");
    let second = stream.next().await.expect("open").expect("delivery");
    assert_eq!(second.message().payload().as_ref(), b"other");
    second.ack().await.expect("ack");
    let js = async_nats::jetstream::new(broker.client().clone());
    let mut stored = js
        .get_stream(courier_nats::stream_name(&topic))
        .await
        .expect("stream");
    let info = stored.info().await.expect("stream info");
    assert_eq!(
        info.state.messages, 2,
        "three publishes of one id plus one other"
    );
    broker.close().await.expect("close");
}
