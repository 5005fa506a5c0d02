//! Connection failures are typed and name the URL without its password.

use courier_core::prelude::*;
use std::time::Duration;

use courier_core::{ConnectErrorKind, Error};
use courier_nats::{NatsBroker, NatsConfig};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

fn image() -> (String, String) {
    let image = std::env::var("COURIER_TEST_NATS_IMAGE")
        .unwrap_or_else(|_| "courier-test/nats:trixie".to_owned());
    let (name, tag) = image.split_once(':').unwrap_or((&image, "latest"));
    (name.to_owned(), tag.to_owned())
}

/// A NATS server of this test's own, started with `args`.
async fn server(args: &[&str]) -> (ContainerAsync<GenericImage>, u16) {
    let (name, tag) = image();
    let container = GenericImage::new(name, tag)
        .with_exposed_port(4222.tcp())
        .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
        .with_cmd(args.iter().map(|a| (*a).to_owned()))
        .start()
        .await
        .expect("start nats container");
    let port = container
        .get_host_port_ipv4(4222)
        .await
        .expect("mapped port");
    (container, port)
}

fn connect_kind(err: &Error) -> ConnectErrorKind {
    match err {
        Error::Connect { kind, .. } => *kind,
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn refused_port_is_refused() {
    let url = "nats://app:s3cret@127.0.0.1:1";
    let err = NatsBroker::connect(url).await.unwrap_err();
    assert_eq!(connect_kind(&err), ConnectErrorKind::Refused, "{err:?}");
    // The kind, then the client's cause (the OS's words for it).
    let text = err.to_string();
    assert!(
        text.starts_with("cannot connect to nats://app:***@127.0.0.1:1: connection refused: "),
        "the kind, then the cause: {text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn unknown_host_is_unreachable_within_the_timeout() {
    let config = NatsConfig::default().connect_timeout(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let err = NatsBroker::connect_with("nats://no-such-host.invalid:4222", config)
        .await
        .unwrap_err();
    let kind = connect_kind(&err);
    assert!(
        matches!(
            kind,
            ConnectErrorKind::Unreachable | ConnectErrorKind::TimedOut
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("nats://no-such-host.invalid:4222"),
        "{err}"
    );
    // Bounded: the call returns instead of hanging (a generous bound, not a timing assertion on speed).
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test]
async fn wrong_token_is_an_authentication_error() {
    let (_server, port) = server(&["--jetstream", "--auth", "right-token"]).await;
    let url = format!("nats://wrong-token@127.0.0.1:{port}");
    let err = NatsBroker::connect(&url).await.unwrap_err();
    assert_eq!(
        connect_kind(&err),
        ConnectErrorKind::Authentication,
        "{err:?}"
    );
    assert!(!err.to_string().contains("wrong-token"), "{err}");
    assert!(!err.is_retryable());
    // The right token works.
    let ok = NatsBroker::connect(&format!("nats://right-token@127.0.0.1:{port}")).await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn server_without_jetstream_is_unsupported() {
    let (_server, port) = server(&["--port", "4222"]).await;
    let url = format!("nats://127.0.0.1:{port}");
    let err = NatsBroker::connect(&url).await.unwrap_err();
    assert_eq!(connect_kind(&err), ConnectErrorKind::Unsupported, "{err:?}");
    let chain = courier_core::error::chain(&err);
    assert!(chain.contains("JetStream is not enabled"), "{chain}");
}

#[tokio::test]
async fn stream_limit_reached_is_a_retryable_limit_error() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let topic = courier_testkit::fixtures::unique_name("limited");
    // An operator-made stream for the topic, holding at most two messages
    // and refusing new ones when full.
    let client = async_nats::connect(server.url()).await.expect("connect");
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: courier_nats::stream_name(&topic),
            subjects: vec![topic.clone()],
            max_messages: 2,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .expect("create limited stream");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    for _ in 0..2 {
        courier_core::Publisher::publish(&broker, &topic, courier_core::Message::new("x"))
            .await
            .expect("within the limit");
    }
    let err = courier_core::Publisher::publish(&broker, &topic, courier_core::Message::new("x"))
        .await
        .unwrap_err();
    match &err {
        Error::Broker {
            operation, kind, ..
        } => {
            assert_eq!(*operation, "publish");
            assert_eq!(*kind, courier_core::BrokerErrorKind::LimitReached);
            assert!(err.is_retryable(), "the limit may free up");
        }
        other => panic!("expected a stream-limit error, got {other:?}"),
    }
    assert!(
        courier_core::error::chain(&err).contains("maximum messages exceeded"),
        "{err:?}"
    );
    broker.close().await.expect("close");
}

#[tokio::test]
async fn a_stream_of_another_subject_is_a_conflict_not_shared() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let topic = courier_testkit::fixtures::unique_name("taken");
    // An operator-made stream with the name courier would use for the
    // topic, capturing another subject.
    let client = async_nats::connect(server.url()).await.expect("connect");
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: courier_nats::stream_name(&topic),
            subjects: vec![format!("{topic}.other")],
            ..Default::default()
        })
        .await
        .expect("create stream");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    let err = broker
        .publish(&topic, courier_core::Message::new("x"))
        .await
        .unwrap_err();
    assert_eq!(
        err.broker_kind(),
        Some(courier_core::BrokerErrorKind::Conflict),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let Error::Broker { source, .. } = &err else {
        panic!("expected a broker error, got {err:?}");
    };
    match source.downcast_ref::<courier_nats::NatsError>() {
        Some(courier_nats::NatsError::StreamConflict { topic: t, .. }) => assert_eq!(t, &topic),
        other => panic!("expected a stream conflict, got {other:?}"),
    }
    broker.close().await.expect("close");
}

/// The URL's options reach the server: the streams courier creates have the
/// storage and duplicate window the URL asks for.
#[tokio::test]
async fn url_options_reach_the_server() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let topic = courier_testkit::fixtures::unique_name("url.options");
    let url = format!(
        "{}?storage=memory&duplicate_window=30s&client_name=url%20test&connect_timeout=10s",
        server.url()
    );
    let broker = NatsBroker::connect(&url).await.expect("connect");
    broker
        .provision(&Subscription::new(&topic, "g"))
        .await
        .expect("provision");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(courier_nats::stream_name(&topic))
        .await
        .expect("the topic's stream");
    let config = stream.info().await.expect("stream info").config.clone();
    assert_eq!(
        config.storage,
        async_nats::jetstream::stream::StorageType::Memory
    );
    assert_eq!(config.duplicate_window, Duration::from_secs(30));
    broker.close().await.expect("close");
}
