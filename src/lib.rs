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
//! # URL options
//!
//! Every adapter reads its URL the same way: user, password, virtual host
//! and option values are percent-decoded, and an option the adapter does
//! not know is an [`Error::InvalidUrl`] naming it, never ignored. Each
//! adapter's documentation has the table of its options (`queue_type` for
//! RabbitMQ, `partitions` for Kafka, `storage` for NATS, `retention` for the
//! in-process broker, ...). These are shared, parsed alike everywhere
//! (durations as `500ms`, `10s`, `2m` or plain seconds):
//!
//! | option | meaning | RabbitMQ | Kafka | NATS |
//! |---|---|---|---|---|
//! | `connect_timeout` | longest wait for the connection | `AmqpConfig::connect_timeout`, 10 s | `KafkaConfig::connect_timeout`, 10 s | `NatsConfig::connect_timeout`, 5 s |
//! | `client_name` (or `client_id`) | the name the broker shows for the connection | `AmqpConfig::connection_name`, `courier` | `KafkaConfig::client_id` (`client.id`), `courier` | `NatsConfig::client_name`, `courier` |
//! | `publish_timeout` | longest wait for the broker to confirm a publish | `AmqpConfig::confirm_timeout`, 30 s | `KafkaConfig::publish_timeout`, 30 s | `NatsConfig::request_timeout` (settlements too), 10 s |
//! | `unroutable` | `error` or `drop`: a publish to a topic no group is bound to fails with `BrokerErrorKind::Unroutable` or returns `Ok` ([`unroutable`]) | `AmqpConfig::unroutable`, `error` | checked, no effect: the topic keeps the message for later groups | checked, no effect: the stream keeps the message for later groups |
//!
//! The in-process broker accepts them and has no use for them except
//! `publish_timeout`, and `unroutable` when its retention is 0. A default
//! prefetch is not a URL option: each [`Subscription`] carries its own
//! (the consumer runtime sets it from its concurrency).
//!
//! [`connect_with`] takes the shared options in code as well
//! ([`ConnectOptions`]); those set there win over the URL's.
//!
//! Passwords, NATS tokens and the values of secret options (`*password*`,
//! `*token*`, `*secret*`, `*key*`, ...) are masked in every error and log
//! line ([`error::redact_url`]).
//!
//! Request/reply works on every broker through the same URL:
//! [`Broker::request`] and [`Broker::request_json`], answered by a
//! [`runtime::responder`] run as an ordinary consumer; [`request`] says
//! what each broker guarantees. [`resilience`] has the circuit breaker,
//! retry with backoff and jitter, and timeout for any async call.
//!
//! The transactional outbox is `courier::outbox` (feature `outbox`, with
//! the backends `outbox-postgres` and `outbox-sqlite`) and the idempotency
//! store for consumers is `courier::idempotency` (feature `idempotency`,
//! with `idempotency-redis`, `idempotency-postgres` and
//! `idempotency-sqlite`); `full` has them all.
//!
//! # Observability
//!
//! Every adapter emits `tracing` spans after the OpenTelemetry messaging
//! conventions, carries the W3C `traceparent` in message headers, records
//! metrics through the `metrics` facade, and answers
//! [`Broker::lag`] and [`Broker::health`]; see [`telemetry`]. The `otel`
//! feature makes the trace context read from a message the OpenTelemetry
//! parent of its process span (it pulls the OpenTelemetry API and
//! `tracing-opentelemetry`, never an SDK).
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
#![cfg_attr(docsrs, feature(doc_cfg))]

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

use std::time::Duration;

use courier_core::adapter::url::{
    self as broker_url, CLIENT_NAME, CONNECT_TIMEOUT, PUBLISH_TIMEOUT, UNROUTABLE,
};
use courier_core::error::redact_url;

/// Every adapter's URL schemes, with the Cargo feature that compiles it in.
const ADAPTERS: &[(&str, &[&str])] = &[
    ("memory", MEMORY_SCHEMES),
    ("amqp", AMQP_SCHEMES),
    ("kafka", KAFKA_SCHEMES),
    ("nats", NATS_SCHEMES),
];

// An adapter owns its schemes; the facade knows them without the adapter
// only to name the feature that is missing.
#[cfg(feature = "memory")]
const MEMORY_SCHEMES: &[&str] = memory::SCHEMES;
#[cfg(not(feature = "memory"))]
const MEMORY_SCHEMES: &[&str] = &["memory"];
#[cfg(feature = "amqp")]
const AMQP_SCHEMES: &[&str] = amqp::SCHEMES;
#[cfg(not(feature = "amqp"))]
const AMQP_SCHEMES: &[&str] = &["amqp", "amqps"];
#[cfg(feature = "kafka")]
const KAFKA_SCHEMES: &[&str] = kafka::SCHEMES;
#[cfg(not(feature = "kafka"))]
const KAFKA_SCHEMES: &[&str] = &["kafka"];
#[cfg(feature = "nats")]
const NATS_SCHEMES: &[&str] = nats::SCHEMES;
#[cfg(not(feature = "nats"))]
const NATS_SCHEMES: &[&str] = &["nats", "tls"];

/// The shared URL options, set in code for [`connect_with`]: an option set
/// here replaces the URL's option of that name; one left unset leaves the
/// URL's (or the adapter's default). See [URL options](crate#url-options).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier::ConnectOptions;
///
/// let options = ConnectOptions::new()
///     .connect_timeout(Duration::from_secs(3))
///     .client_name("billing");
/// assert_eq!(
///     options.apply_to("nats://localhost:4222?client_id=old&storage=memory"),
///     "nats://localhost:4222?storage=memory&connect_timeout=3s&client_name=billing"
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// `connect_timeout`: longest wait for the connection.
    pub connect_timeout: Option<Duration>,
    /// `client_name`: the name the broker shows for the connection.
    pub client_name: Option<String>,
    /// `publish_timeout`: longest wait for the broker to confirm a publish.
    pub publish_timeout: Option<Duration>,
    /// `unroutable`: what a publish no consumer group can receive does.
    pub unroutable: Option<UnroutablePolicy>,
}

impl ConnectOptions {
    /// No options: the URL's apply as they are.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`ConnectOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Sets [`ConnectOptions::client_name`].
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// Sets [`ConnectOptions::publish_timeout`].
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = Some(timeout);
        self
    }

    /// Sets [`ConnectOptions::unroutable`].
    pub fn unroutable(mut self, policy: UnroutablePolicy) -> Self {
        self.unroutable = Some(policy);
        self
    }

    /// `url` with the options set here in place of its own of the same name
    /// (`client_name` also replaces `client_id`); `url` unchanged when none
    /// is set.
    pub fn apply_to(&self, url: &str) -> String {
        let connect_timeout = self.connect_timeout.map(broker_url::format_duration);
        let publish_timeout = self.publish_timeout.map(broker_url::format_duration);
        let set: Vec<(&str, &str)> = [
            (CONNECT_TIMEOUT, connect_timeout.as_deref()),
            (CLIENT_NAME, self.client_name.as_deref()),
            (PUBLISH_TIMEOUT, publish_timeout.as_deref()),
            (UNROUTABLE, self.unroutable.map(UnroutablePolicy::as_str)),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect();
        broker_url::set_options(url, &set)
    }
}

/// Connects to the broker named by `url` and returns it as a [`Broker`].
///
/// # Errors
///
/// [`Error::InvalidUrl`] for a malformed URL, an unknown scheme, or an
/// unknown or malformed option, [`Error::FeatureDisabled`] naming the Cargo
/// feature when the scheme's adapter is not compiled in, and the adapter's
/// [`Error::Connect`] (URL shown without its password) when the broker
/// cannot be reached.
pub async fn connect(url: &str) -> Result<Broker> {
    connect_with(url, ConnectOptions::new()).await
}

/// Connects as [`connect`] does, with `options` in place of the URL's
/// options of the same names.
///
/// # Errors
///
/// As [`connect`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier::ConnectOptions;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier::Result<()> {
/// let options = ConnectOptions::new().connect_timeout(Duration::from_secs(3));
/// let broker = courier::connect_with("memory://?retention=100", options).await?;
/// broker.close().await?;
/// # Ok(()) }
/// ```
pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Broker> {
    let Some((scheme, _)) = url.split_once("://") else {
        return Err(broker_url::invalid(url, "expected scheme://…"));
    };
    let Some(&(feature, _)) = ADAPTERS
        .iter()
        .find(|(_, schemes)| schemes.contains(&scheme))
    else {
        let known: Vec<&str> = ADAPTERS
            .iter()
            .flat_map(|(_, s)| s.iter().copied())
            .collect();
        return Err(broker_url::invalid(
            url,
            format!("unknown scheme {scheme:?}; known: {}", known.join(", ")),
        ));
    };
    let url = options.apply_to(url);
    let url = url.as_str();
    match feature {
        #[cfg(feature = "memory")]
        "memory" => Ok(memory::MemoryBroker::connect(url)?.into_broker()),
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
