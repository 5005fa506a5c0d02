//! Bad input gets a clear, typed error and loses nothing.

use courier::headers::{HeaderError, MAX_TOTAL_LEN};
use courier::{Error, Message, Subscription};
use futures::StreamExt;

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Order {
    id: u64,
}

#[tokio::test]
async fn invalid_topic_names_are_typed_errors_naming_the_problem() {
    let broker = courier::connect("memory://").await.unwrap();
    let err = broker
        .publish("orders placed", Message::new("x"))
        .await
        .unwrap_err();
    match &err {
        Error::InvalidName(invalid) => assert_eq!(invalid.name, "orders placed"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "invalid topic name \"orders placed\": it contains ' '; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"
    );
    assert!(!err.is_retryable());
}

#[test]
fn oversized_headers_are_refused_and_the_message_keeps_the_others() {
    let message = Message::new("x").with_header("small", "kept").unwrap();
    let err = message
        .clone()
        .with_header("huge", "x".repeat(MAX_TOTAL_LEN))
        .unwrap_err();
    assert!(
        matches!(
            err,
            HeaderError::TooLarge {
                limit: MAX_TOTAL_LEN,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(message.header("small"), Some("kept"));
}

#[test]
fn non_utf8_header_values_from_a_broker_are_typed_errors() {
    let err = courier::adapter::wire::decode(
        [("x-legacy", &b"caf\xe9"[..])],
        courier::Bytes::new(),
        None,
        courier::MessageId::new,
    )
    .unwrap_err();
    assert_eq!(err, HeaderError::NotUtf8("x-legacy".into()));
}

#[tokio::test]
async fn json_that_does_not_match_the_type_is_a_decode_error_and_the_message_stays() {
    let broker = courier::connect("memory://").await.unwrap();
    let sub = Subscription::new("orders", "billing");
    let mut stream = broker.subscribe(sub).await.unwrap();
    broker
        .publish("orders", Message::new(r#"{"id":"seven"}"#))
        .await
        .unwrap();
    let delivery = stream.next().await.unwrap().unwrap();
    let err = delivery.message().json::<Order>().unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("Order"), "{err}");
    assert!(!err.is_retryable());
    // Nothing is lost: dead-lettering keeps the payload with the reason.
    let dlq = Subscription::new("orders.dlq", "ops");
    broker.provision(&dlq).await.unwrap();
    delivery
        .nack(courier::Nack::dead_letter(courier::error::chain(&err)))
        .await
        .unwrap();
    let mut dead = broker.subscribe(dlq).await.unwrap();
    let d = dead.next().await.unwrap().unwrap();
    assert_eq!(d.message().payload().as_ref(), br#"{"id":"seven"}"#);
    let reason = d.message().header(courier::delivery::DLQ_REASON).unwrap();
    assert!(reason.contains("cannot decode message"), "{reason}");
    assert!(
        reason.contains("invalid type: string \"seven\", expected u64"),
        "{reason}"
    );
    d.ack().await.unwrap();
}

/// The URL rules every compiled-in scheme follows, checked without a broker.
mod urls {
    use std::time::Duration;

    use courier::{ConnectOptions, Error};

    /// The shared options as an adapter's parsed config holds them.
    #[derive(Debug, PartialEq)]
    struct Shared {
        connect_timeout: Duration,
        client_name: String,
        publish_timeout: Duration,
    }

    /// An adapter: its schemes, what follows `scheme://` in a valid URL
    /// (with a host `h`), and its config parsed from a URL, as far as it
    /// holds the shared options (`None`: accepted, without effect).
    struct Adapter {
        schemes: &'static [&'static str],
        rest: &'static str,
        parse: ParseShared,
    }

    /// An adapter's config parser, as far as the shared options go.
    type ParseShared = fn(&str) -> courier::Result<Option<Shared>>;

    fn adapters() -> Vec<Adapter> {
        let mut adapters = Vec::new();
        #[cfg(feature = "memory")]
        adapters.push(Adapter {
            schemes: courier::memory::SCHEMES,
            rest: "",
            parse: |url| courier::memory::MemoryConfig::from_url(url).map(|_| None),
        });
        #[cfg(feature = "amqp")]
        adapters.push(Adapter {
            schemes: courier::amqp::SCHEMES,
            rest: "h/%2f",
            parse: |url| {
                let c = courier::amqp::AmqpConfig::from_url(url)?;
                Ok(Some(Shared {
                    connect_timeout: c.connect_timeout,
                    client_name: c.connection_name,
                    publish_timeout: c.confirm_timeout,
                }))
            },
        });
        #[cfg(feature = "kafka")]
        adapters.push(Adapter {
            schemes: courier::kafka::SCHEMES,
            rest: "h:9092",
            parse: |url| {
                let c = courier::kafka::KafkaConfig::from_url(url)?;
                Ok(Some(Shared {
                    connect_timeout: c.connect_timeout,
                    client_name: c.client_id,
                    publish_timeout: c.publish_timeout,
                }))
            },
        });
        #[cfg(feature = "nats")]
        adapters.push(Adapter {
            schemes: courier::nats::SCHEMES,
            rest: "h:4222",
            parse: |url| {
                let c = courier::nats::NatsConfig::from_url(url)?;
                Ok(Some(Shared {
                    connect_timeout: c.connect_timeout,
                    client_name: c.client_name,
                    publish_timeout: c.request_timeout,
                }))
            },
        });
        adapters
    }

    /// `scheme://rest` with `query` (which starts with `?`) for every
    /// compiled-in scheme, with the adapter's config parser.
    fn every_scheme(query: &str) -> Vec<(String, ParseShared)> {
        adapters()
            .into_iter()
            .flat_map(|a| {
                a.schemes
                    .iter()
                    .map(move |scheme| (format!("{scheme}://{}{query}", a.rest), a.parse))
            })
            .collect()
    }

    fn reason(url: &str, err: &Error) -> String {
        match err {
            Error::InvalidUrl { reason, .. } => reason.clone(),
            other => panic!("{url}: not an invalid URL: {other:?}"),
        }
    }

    /// Display and Debug of `err` hold none of `secrets`.
    fn assert_hidden(url: &str, err: &Error, secrets: &[&str]) {
        let shown = format!("{err} / {err:?}");
        for secret in secrets {
            assert!(
                !shown.contains(secret),
                "{url}: {secret:?} shown in {shown}"
            );
        }
    }

    #[test]
    fn every_scheme_is_checked() {
        let schemes: Vec<String> = every_scheme("").into_iter().map(|(url, _)| url).collect();
        let expected = [
            (cfg!(feature = "memory"), &["memory://"][..]),
            (
                cfg!(feature = "amqp"),
                &["amqp://h/%2f", "amqps://h/%2f"][..],
            ),
            (cfg!(feature = "kafka"), &["kafka://h:9092"][..]),
            (
                cfg!(feature = "nats"),
                &["nats://h:4222", "tls://h:4222"][..],
            ),
        ];
        let expected: Vec<&str> = expected
            .iter()
            .filter(|(on, _)| *on)
            .flat_map(|(_, urls)| urls.iter().copied())
            .collect();
        assert_eq!(schemes, expected);
    }

    #[tokio::test]
    async fn an_unknown_option_is_an_invalid_url_naming_it_on_every_scheme() {
        for (url, parse) in every_scheme("?colour=blue") {
            let from_config = parse(&url).expect_err(&url);
            let from_connect = courier::connect(&url).await.expect_err(&url);
            for err in [&from_config, &from_connect] {
                let reason = reason(&url, err);
                assert!(
                    reason.starts_with("unknown option \"colour\""),
                    "{url}: {reason}"
                );
            }
        }
    }

    #[test]
    fn the_shared_options_parse_to_the_same_values_on_every_scheme() {
        let expected = Shared {
            connect_timeout: Duration::from_millis(1500),
            client_name: "billing v2/é&x".into(),
            publish_timeout: Duration::from_secs(120),
        };
        for query in [
            "?connect_timeout=1500ms&client_name=billing+v2%2F%C3%A9%26x&publish_timeout=2m",
            "?client_id=billing%20v2/%C3%A9%26x&publish_timeout=120&connect_timeout=1500ms",
        ] {
            for (url, parse) in every_scheme(query) {
                match parse(&url).expect(&url) {
                    Some(shared) => assert_eq!(shared, expected, "{url}"),
                    None => assert!(url.starts_with("memory:"), "{url}"),
                }
            }
        }
        for (url, parse) in every_scheme("?connect_timeout=10") {
            if let Some(shared) = parse(&url).expect(&url) {
                assert_eq!(
                    shared.connect_timeout,
                    Duration::from_secs(10),
                    "plain seconds"
                );
            }
        }
        for (query, expected) in [
            (
                "?connect_timeout=0",
                "option connect_timeout: expected a duration",
            ),
            (
                "?connect_timeout=1.5s",
                "option connect_timeout: expected a duration",
            ),
            (
                "?publish_timeout=soon",
                "option publish_timeout: expected a duration",
            ),
            ("?client_name=", "option client_name: expected a value"),
            (
                "?client_name=a&client_id=b",
                "option \"client_name\" is given twice",
            ),
        ] {
            for (url, parse) in every_scheme(query) {
                let err = parse(&url).expect_err(&url);
                let reason = reason(&url, &err);
                assert!(reason.starts_with(expected), "{url}: {reason}");
            }
        }
    }

    #[test]
    fn connect_options_win_over_the_url_on_every_scheme() {
        let options = ConnectOptions::new()
            .connect_timeout(Duration::from_millis(2500))
            .client_name("from code")
            .publish_timeout(Duration::from_secs(7));
        for (url, parse) in
            every_scheme("?connect_timeout=1s&client_id=from-url&publish_timeout=1m")
        {
            let applied = options.apply_to(&url);
            if let Some(shared) = parse(&applied).expect(&applied) {
                let expected = Shared {
                    connect_timeout: Duration::from_millis(2500),
                    client_name: "from code".into(),
                    publish_timeout: Duration::from_secs(7),
                };
                assert_eq!(shared, expected, "{applied}");
            }
            // Options not set in code leave the URL's.
            let only_name = ConnectOptions::new().client_name("x").apply_to(&url);
            if let Some(shared) = parse(&only_name).expect(&only_name) {
                assert_eq!(
                    shared.connect_timeout,
                    Duration::from_secs(1),
                    "{only_name}"
                );
                assert_eq!(shared.client_name, "x", "{only_name}");
            }
        }
    }

    #[tokio::test]
    async fn secrets_never_show_in_url_errors() {
        for (scheme, rest) in every_scheme("").into_iter().map(|(url, _)| {
            url.split_once("://")
                .map(|(s, r)| (s.to_owned(), r.to_owned()))
                .unwrap()
        }) {
            let host = rest.split('/').next().unwrap_or_default();
            let mut cases = vec![
                (
                    format!("{scheme}://u:p%40ss@{host}/?x=1"),
                    vec!["p%40ss", "p@ss"],
                ),
                (format!("{scheme}://u:p/ss@{host}/?x=1"), vec!["p/ss"]),
                (
                    format!("{scheme}://{rest}?sasl_password=hunter2"),
                    vec!["hunter2"],
                ),
                (
                    format!("{scheme}://{rest}?token=t0ps3cret&x=1"),
                    vec!["t0ps3cret"],
                ),
                (
                    format!("{scheme}://{rest}?api%5Fkey=k3yk3y"),
                    vec!["k3yk3y"],
                ),
            ];
            if scheme == "nats" || scheme == "tls" {
                cases.push((
                    format!("{scheme}://s3cr3tt0ken@{host}?x=1"),
                    vec!["s3cr3tt0ken"],
                ));
            }
            for (url, secrets) in cases {
                let err = courier::connect(&url).await.expect_err(&url);
                assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
                assert_hidden(&url, &err, &secrets);
                let err = courier::connect_with(&url, ConnectOptions::new().client_name("c"))
                    .await
                    .expect_err(&url);
                assert_hidden(&url, &err, &secrets);
            }
        }
        // The option is named even when its value is hidden.
        let err = courier::connect("memory://?sasl_password=hunter2")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("\"sasl_password\""), "{err}");
    }
}
