//! Typed errors: connection failures, a missing topic that may not be
//! created, and records that are too large — against the real broker
//! where one is involved.

use courier_core::prelude::*;
use std::time::Duration;

use courier_core::{ConnectErrorKind, Error, Message, Subscription};
use courier_kafka::{KafkaBroker, KafkaConfig};
use courier_testkit::fixtures::{self, unique_name};

/// Guards against a connect that hangs: the adapter's own timeout must end
/// it long before.
const HANG_GUARD: Duration = Duration::from_secs(60);

async fn connect_error(config: KafkaConfig) -> Error {
    tokio::time::timeout(HANG_GUARD, KafkaBroker::connect_with(config))
        .await
        .expect("connect ended by its own timeout")
        .expect_err("connect must fail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_is_refused_and_names_the_url() {
    let err = connect_error(KafkaConfig::from_url("kafka://127.0.0.1:1").expect("url")).await;
    assert!(
        matches!(
            &err,
            Error::Connect {
                kind: ConnectErrorKind::Refused,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("kafka://127.0.0.1:1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_unreachable() {
    let err = connect_error(
        KafkaConfig::from_url("kafka://no-such-host.invalid:9092")
            .expect("url")
            .connect_timeout(Duration::from_secs(5)),
    )
    .await;
    assert!(
        matches!(
            &err,
            Error::Connect {
                kind: ConnectErrorKind::Unreachable,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("no-such-host.invalid:9092"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_times_out() {
    // A listener that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("kafka://{}", listener.local_addr().expect("address"));
    let err = connect_error(
        KafkaConfig::from_url(&url)
            .expect("url")
            .connect_timeout(Duration::from_secs(2)),
    )
    .await;
    assert!(
        matches!(
            &err,
            Error::Connect {
                kind: ConnectErrorKind::TimedOut | ConnectErrorKind::Protocol,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(&url), "{err}");
    drop(listener);
}

#[tokio::test]
async fn credentials_in_the_url_are_refused_without_showing_the_password() {
    let err = KafkaBroker::connect("kafka://user:s3cret@127.0.0.1:9092")
        .await
        .expect_err("credentials are configured through rdkafka settings");
    assert!(matches!(&err, Error::InvalidUrl { .. }), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topic_without_creation_is_topic_not_found() {
    let server = fixtures::kafka().await.expect("kafka fixture");
    let config = KafkaConfig::from_url(server.url())
        .expect("url")
        .create_topics(false);
    let broker = KafkaBroker::connect_with(config).await.expect("connect");
    let topic = unique_name("missing");
    let err = broker
        .publish(&topic, Message::new("x"))
        .await
        .expect_err("publish to a missing topic");
    assert!(
        matches!(&err, Error::TopicNotFound(t) if *t == topic),
        "{err:?}"
    );
    let err = broker
        .subscribe(Subscription::new(&topic, "g"))
        .await
        .err()
        .expect("subscribe to a missing topic");
    assert!(
        matches!(&err, Error::TopicNotFound(t) if *t == topic),
        "{err:?}"
    );
    broker.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_over_the_limit_is_refused_before_sending() {
    let server = fixtures::kafka().await.expect("kafka fixture");
    let config = KafkaConfig::from_url(server.url())
        .expect("url")
        .max_payload(1024);
    let broker = KafkaBroker::connect_with(config).await.expect("connect");
    let topic = unique_name("large");
    let err = broker
        .publish(&topic, Message::new(vec![0_u8; 2048]))
        .await
        .expect_err("too large");
    assert!(
        matches!(
            err,
            Error::PayloadTooLarge {
                size: 2048,
                limit: 1024
            }
        ),
        "{err:?}"
    );
    broker
        .publish(&topic, Message::new(vec![0_u8; 1024]))
        .await
        .expect("at the limit");
    broker.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_over_the_clients_limit_is_payload_too_large() {
    // rdkafka's own record limit (`message.max.bytes`) below courier's
    // payload limit: rdkafka refuses the record, courier types the error.
    let server = fixtures::kafka().await.expect("kafka fixture");
    let config = KafkaConfig::from_url(server.url())
        .expect("url")
        .rdkafka("message.max.bytes", "4096");
    let broker = KafkaBroker::connect_with(config).await.expect("connect");
    let topic = unique_name("record-limit");
    let err = broker
        .publish(&topic, Message::new(vec![0_u8; 8192]))
        .await
        .expect_err("record too large");
    assert!(
        matches!(err, Error::PayloadTooLarge { size: 8192, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable(), "{err:?}");
    broker
        .publish(&topic, Message::new(vec![0_u8; 1024]))
        .await
        .expect("a record within the limit");
    broker.close().await.expect("close");
}
