//! Connection failures are typed, bounded in time, and name the URL
//! without its password; each one checked against a real server (or a real
//! socket).

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use courier_amqp::{AmqpBroker, AmqpConfig};
use courier_core::{ConnectErrorKind, Error};

/// Connects and returns the connect error's kind and text.
async fn failure(url: &str, config: AmqpConfig) -> (ConnectErrorKind, String, String) {
    let started = Instant::now();
    let err = AmqpBroker::connect_with(url, config)
        .await
        .expect_err("connecting must fail");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "connect took {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    let debug = format!("{err:?}");
    match err {
        Error::Connect {
            url: shown, kind, ..
        } => {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(
                !text.contains("s3cret") && !debug.contains("s3cret"),
                "{text} / {debug}"
            );
            (kind, shown, text)
        }
        other => panic!("not a connect error: {other:?}"),
    }
}

#[tokio::test]
async fn wrong_password_is_an_authentication_error() {
    let fixture = common::shared().await;
    let url = format!(
        "amqp://guest:s3cret@{}:{}/%2f",
        fixture.host(),
        fixture.port()
    );
    let (kind, shown, text) = failure(&url, AmqpConfig::default()).await;
    assert_eq!(kind, ConnectErrorKind::Authentication, "{text}");
    assert_eq!(
        shown,
        format!("amqp://guest:***@{}:{}/%2f", fixture.host(), fixture.port())
    );
    assert!(!kind.is_retryable());
}

#[tokio::test]
async fn unknown_user_is_an_authentication_error() {
    let fixture = common::shared().await;
    let url = format!(
        "amqp://nobody:s3cret@{}:{}/%2f",
        fixture.host(),
        fixture.port()
    );
    let (kind, _, text) = failure(&url, AmqpConfig::default()).await;
    assert_eq!(kind, ConnectErrorKind::Authentication, "{text}");
}

#[tokio::test]
async fn missing_vhost_is_not_found() {
    let fixture = common::shared().await;
    let url = format!(
        "amqp://guest:guest@{}:{}/no-such-vhost",
        fixture.host(),
        fixture.port()
    );
    let (kind, shown, text) = failure(&url, AmqpConfig::default()).await;
    assert_eq!(kind, ConnectErrorKind::NotFound, "{text}");
    assert!(text.contains(&shown), "{text}");
}

#[tokio::test]
async fn vhost_without_permission_is_an_authorization_error() {
    let fixture = common::shared().await;
    let vhost = common::name("locked");
    if common::rabbitmqctl(&fixture, &["add_vhost", &vhost]).is_none() {
        eprintln!("skipped: the RabbitMQ fixture cannot be administered");
        return;
    }
    let url = format!(
        "amqp://guest:guest@{}:{}/{vhost}",
        fixture.host(),
        fixture.port()
    );
    let (kind, _, text) = failure(&url, AmqpConfig::default()).await;
    assert_eq!(kind, ConnectErrorKind::Authorization, "{text}");
}

#[tokio::test]
async fn closed_port_is_refused() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("amqp://guest:s3cret@127.0.0.1:{port}/%2f");
    let (kind, shown, _) = failure(&url, AmqpConfig::default()).await;
    assert_eq!(kind, ConnectErrorKind::Refused);
    assert_eq!(shown, format!("amqp://guest:***@127.0.0.1:{port}/%2f"));
    assert!(kind.is_retryable());
}

#[tokio::test]
async fn unknown_host_is_unreachable() {
    let url = "amqp://guest:s3cret@courier-test-no-such-host.invalid:5672/%2f";
    let (kind, shown, _) = failure(url, AmqpConfig::default()).await;
    assert_eq!(kind, ConnectErrorKind::Unreachable);
    assert_eq!(
        shown,
        "amqp://guest:***@courier-test-no-such-host.invalid:5672/%2f"
    );
}

#[tokio::test]
async fn silent_server_times_out_within_the_connect_timeout() {
    // Accepts the TCP connection and never answers the AMQP handshake.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let held = listener.accept();
        std::thread::sleep(Duration::from_secs(3));
        drop(held);
    });
    let url = format!("amqp://guest:s3cret@127.0.0.1:{port}/%2f");
    let started = Instant::now();
    let config = AmqpConfig::default().connect_timeout(Duration::from_millis(500));
    let (kind, _, text) = failure(&url, config).await;
    assert_eq!(kind, ConnectErrorKind::TimedOut, "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    holder.join().unwrap();
}

#[tokio::test]
async fn malformed_url_is_invalid() {
    let err = AmqpBroker::connect("amqp://guest:s3cret@host:notaport/%2f")
        .await
        .expect_err("a malformed URL must fail");
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[tokio::test]
async fn tls_against_a_plain_port_is_a_tls_error() {
    let fixture = common::shared().await;
    let url = format!(
        "amqps://guest:s3cret@{}:{}/%2f",
        fixture.host(),
        fixture.port()
    );
    let config = AmqpConfig::default().connect_timeout(Duration::from_secs(5));
    let (kind, shown, text) = failure(&url, config).await;
    assert_eq!(kind, ConnectErrorKind::Tls, "{text}");
    assert!(shown.starts_with("amqps://guest:***@"), "{shown}");
}

/// The URL's options reach the broker: the connection name (shared
/// `client_name`, percent-decoded) and lapin's `heartbeat`.
#[tokio::test]
async fn url_options_reach_the_broker() {
    let fixture = common::shared().await;
    let name = common::name("url-options");
    let url = format!(
        "{}?client_name={}%20x&heartbeat=7&queue_type=classic&publish_timeout=20s",
        fixture.url(),
        name
    );
    let broker = AmqpBroker::connect(&url).await.expect("connect");
    if let Some(listing) = common::rabbitmqctl(
        &fixture,
        &[
            "list_connections",
            "--no-table-headers",
            "-q",
            "timeout",
            "client_properties",
        ],
    ) {
        let ours: Vec<&str> = listing
            .lines()
            .filter(|line| line.contains(&format!("{name} x-")))
            .collect();
        assert_eq!(ours.len(), 2, "publisher and subscriber: {listing}");
        for line in &ours {
            assert!(
                line.contains(&format!("{name} x-publisher"))
                    || line.contains(&format!("{name} x-subscriber")),
                "{line}"
            );
            assert_eq!(
                line.split_whitespace().next(),
                Some("7"),
                "heartbeat: {line}"
            );
        }
    }
    courier_core::Close::close(&broker).await.expect("close");
}
