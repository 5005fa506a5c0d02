//! courier: one publish/subscribe API for RabbitMQ, Kafka, NATS JetStream and
//! an in-process broker.
//!
//! Write a handler once; run it on any broker. Cargo features choose which
//! adapters are compiled in (`memory`, the default, plus `amqp`, `kafka`,
//! `nats`, or `full` for all); a URL chooses at run time:
//!
//! | URL | broker | feature |
//! |---|---|---|
//! | `memory://` or `memory://name` | in-process (a fresh one, or the process-wide one called `name`) | `memory` |
//! | `amqp://user:pass@host:5672/vhost`, `amqps://…` | RabbitMQ | `amqp` |
//! | `kafka://host:9092,host:9092` | Kafka | `kafka` |
//! | `nats://host:4222`, `tls://…` | NATS JetStream | `nats` |
//!
//! The transactional outbox is `courier::outbox` (feature `outbox`, with
//! the backends `outbox-postgres` and `outbox-sqlite`) and the idempotency
//! store for consumers is `courier::idempotency` (feature `idempotency`,
//! with `idempotency-redis`, `idempotency-postgres` and
//! `idempotency-sqlite`); `full` has them all.
//!
//! # Examples
//!
//! ```
//! use courier::{Message, Subscription};
//! use futures::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> courier::Result<()> {
//! let broker = courier::connect("memory://").await?;
//! let mut orders = broker.subscribe(Subscription::new("orders", "billing")).await?;
//! broker.publish("orders", Message::from_json(&serde_json::json!({"id": 1}))?).await?;
//!
//! let delivery = orders.next().await.expect("stream open")?;
//! let order: serde_json::Value = delivery.message().json()?;
//! assert_eq!(order["id"], 1);
//! delivery.ack().await?;
//! broker.close().await?;
//! # Ok(()) }
//! ```

#[doc(hidden)]
pub use courier_core::adapter;
pub use courier_core::*;

/// The README's code, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "amqp")]
pub use courier_amqp as amqp;
#[cfg(feature = "idempotency")]
pub use courier_idempotency as idempotency;
#[cfg(feature = "kafka")]
pub use courier_kafka as kafka;
#[cfg(feature = "memory")]
pub use courier_memory as memory;
#[cfg(feature = "nats")]
pub use courier_nats as nats;
/// The transactional outbox and its relay (`outbox`; backends with
/// `outbox-postgres`, `outbox-sqlite`).
#[cfg(feature = "outbox")]
pub use courier_outbox as outbox;

use courier_core::error::redact_url;

/// The schemes `connect` understands, with the feature each needs.
const SCHEMES: &[(&str, &str)] = &[
    ("memory", "memory"),
    ("amqp", "amqp"),
    ("amqps", "amqp"),
    ("kafka", "kafka"),
    ("nats", "nats"),
    ("tls", "nats"),
];

/// Connects to the broker named by `url` and returns it as a [`Broker`].
///
/// # Errors
///
/// [`Error::InvalidUrl`] for a malformed URL or an unknown scheme,
/// [`Error::FeatureDisabled`] naming the Cargo feature when the scheme's
/// adapter is not compiled in, and the adapter's [`Error::Connect`] (URL
/// shown without its password) when the broker cannot be reached.
pub async fn connect(url: &str) -> Result<Broker> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(Error::InvalidUrl {
            url: redact_url(url),
            reason: "expected scheme://…".into(),
        });
    };
    let Some(&(_, feature)) = SCHEMES.iter().find(|(s, _)| *s == scheme) else {
        let known: Vec<&str> = SCHEMES.iter().map(|(s, _)| *s).collect();
        return Err(Error::InvalidUrl {
            url: redact_url(url),
            reason: format!("unknown scheme {scheme:?}; known: {}", known.join(", ")),
        });
    };
    #[cfg(not(feature = "memory"))]
    let _ = rest;
    match feature {
        #[cfg(feature = "memory")]
        "memory" => Ok(connect_memory(rest)),
        #[cfg(feature = "amqp")]
        "amqp" => Ok(amqp::AmqpBroker::connect(url).await?.into_broker()),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(kafka::KafkaBroker::connect(url).await?.into_broker()),
        #[cfg(feature = "nats")]
        "nats" => Ok(nats::NatsBroker::connect(url).await?.into_broker()),
        _ => Err(Error::FeatureDisabled {
            url: redact_url(url),
            feature,
        }),
    }
}

#[cfg(feature = "memory")]
fn connect_memory(name: &str) -> Broker {
    let name = name.trim_end_matches('/');
    if name.is_empty() {
        memory::MemoryBroker::new().into_broker()
    } else {
        memory::MemoryBroker::named(name).into_broker()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_scheme_names_the_known_ones() {
        let err = connect("mqtt://u:secret@host").await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
        assert!(text.contains("mqtt://u:***@host"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("amqp") && text.contains("kafka"), "{text}");
    }

    #[tokio::test]
    async fn missing_scheme_is_invalid() {
        let err = connect("localhost:5672").await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn named_memory_brokers_are_shared() {
        let a = connect("memory://shared-test").await.unwrap();
        let b = connect("memory://shared-test").await.unwrap();
        let mut stream = b.subscribe(Subscription::new("t", "g")).await.unwrap();
        a.publish("t", Message::new("x")).await.unwrap();
        let d = futures::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.message().payload().as_ref(), b"x");
        d.ack().await.unwrap();
        a.close().await.unwrap();
        // Closing one connection leaves the other working.
        b.publish("t", Message::new("y")).await.unwrap();
    }

    /// Every compiled-in scheme reaches its adapter: a closed port is a
    /// refused connection, reported with the URL without its password.
    #[tokio::test]
    async fn compiled_in_schemes_reach_their_adapter() {
        let urls = [
            ("amqp://u:pw@127.0.0.1:1/%2f", cfg!(feature = "amqp")),
            ("amqps://u:pw@127.0.0.1:1/%2f", cfg!(feature = "amqp")),
            ("kafka://127.0.0.1:1", cfg!(feature = "kafka")),
            ("nats://u:pw@127.0.0.1:1", cfg!(feature = "nats")),
        ];
        for (url, _) in urls.into_iter().filter(|(_, on)| *on) {
            let err = connect(url).await.expect_err(url);
            let Error::Connect {
                url: shown, kind, ..
            } = &err
            else {
                panic!("{url}: {err:?}");
            };
            assert_eq!(*shown, redact_url(url));
            assert!(!err.to_string().contains("pw"), "{err}");
            assert!(err.to_string().contains(shown.as_str()), "{err}");
            assert_eq!(*kind, ConnectErrorKind::Refused, "{url}");
        }
    }

    #[cfg(feature = "idempotency")]
    #[tokio::test]
    async fn idempotency_store_by_url() {
        let store = idempotency::connect("memory://").await.unwrap();
        let key = idempotency::IdempotencyKey::new("g", "k");
        let lease = std::time::Duration::from_secs(5);
        assert!(store.claim(&key, lease).await.unwrap().is_claimed());
        assert!(store.claim(&key, lease).await.unwrap().is_in_progress());
    }

    #[tokio::test]
    async fn schemes_without_their_feature_name_it() {
        let schemes = [
            ("amqp://u:pw@h", "amqp", cfg!(not(feature = "amqp"))),
            ("kafka://h:9092", "kafka", cfg!(not(feature = "kafka"))),
            ("nats://u:pw@h", "nats", cfg!(not(feature = "nats"))),
        ];
        for (url, feature, _) in schemes.into_iter().filter(|(_, _, off)| *off) {
            match connect(url).await {
                Err(Error::FeatureDisabled { url, feature: f }) => {
                    assert_eq!(f, feature);
                    assert!(!url.contains("pw"), "{url}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
