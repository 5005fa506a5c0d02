//! Nothing published is unroutable on JetStream: the stream keeps a
//! message for a group created later. A subject no stream captures (the
//! stream was deleted under the connection) is a typed error, never `Ok`.

use courier_core::{BrokerErrorKind, Message, Publisher};
use courier_nats::{NatsBroker, stream_name};

#[tokio::test]
async fn a_subject_without_stream_is_a_typed_error_whatever_the_option() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let url = format!("{}?unroutable=drop", server.url());
    let broker = NatsBroker::connect(&url).await.expect("connect");
    let topic = courier_testkit::fixtures::unique_name("no-stream");
    Publisher::publish(&broker, &topic, Message::new("kept"))
        .await
        .expect("the stream is created and keeps it");

    let js = async_nats::jetstream::new(broker.client().clone());
    js.delete_stream(stream_name(&topic))
        .await
        .expect("delete the stream");
    let err = Publisher::publish(&broker, &topic, Message::new("nowhere"))
        .await
        .expect_err("no stream captures the subject");
    assert_eq!(
        err.broker_kind(),
        Some(BrokerErrorKind::NotFound),
        "{err:?}"
    );
    courier_core::Close::close(&broker).await.expect("close");
}
