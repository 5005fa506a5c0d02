//! Settings of the Kafka adapter and the `kafka://` URL.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use courier_core::Result;
use courier_core::adapter::url::{self as broker_url, SharedOptions, UrlOption};
use courier_core::error::is_secret_option;

/// The URL scheme of the Kafka adapter.
pub const SCHEMES: &[&str] = &["kafka"];

/// The options a `kafka://` URL may carry (see the crate documentation).
pub const URL_OPTIONS: &[&str] = &[
    broker_url::CONNECT_TIMEOUT,
    broker_url::CLIENT_NAME,
    broker_url::CLIENT_ID,
    broker_url::PUBLISH_TIMEOUT,
    broker_url::UNROUTABLE,
    "partitions",
    "replication_factor",
    "create_topics",
    "delete_reply_topic",
    "session_timeout",
];

/// Settings of a [`KafkaBroker`](crate::KafkaBroker).
///
/// `kafka://host:port,host:port?partitions=3&create_topics=false` sets the
/// bootstrap servers and, optionally, the options in the table of the
/// [crate documentation](crate#url) ([`KafkaConfig::from_url`]).
///
/// `Debug` masks the values of [`KafkaConfig::rdkafka`] properties that
/// hold secrets (`sasl.password`, `ssl.key.password`, ...).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`, as rdkafka's `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// The client id the broker sees (default `courier`).
    pub client_id: String,
    /// Create a topic that does not exist when it is first published to or
    /// subscribed (default `true`). When `false`, such a topic is
    /// [`Error::TopicNotFound`](courier_core::Error::TopicNotFound).
    pub create_topics: bool,
    /// Delete this connection's reply topic when it closes (default
    /// `false`); see [Request/reply](crate#requestreply) for why it is off.
    pub delete_reply_topic: bool,
    /// Partitions of the topics courier creates (default 1). One partition
    /// keeps every message of a topic in publish order, keyed or not; more
    /// partitions let the competing consumers of a group share the load,
    /// and keep order per key only (the record key picks the partition).
    pub partitions: i32,
    /// Replication factor of the topics courier creates (default 1; use 3
    /// on a production cluster).
    pub replication_factor: i32,
    /// How long connecting may take before it fails with
    /// `ConnectErrorKind::TimedOut` (default 10 s); also bounds each
    /// metadata, offset and admin request.
    pub connect_timeout: Duration,
    /// How long a publish may wait for the broker's confirmation, retries
    /// included (rdkafka's `message.timeout.ms`, default 30 s). A broker
    /// outage shorter than this delays publishes; a longer one fails them
    /// with [`Error::Timeout`](courier_core::Error::Timeout). It also bounds
    /// `provision` and `subscribe` as a whole.
    pub publish_timeout: Duration,
    /// Largest payload accepted (default 8 MiB). Larger payloads fail with
    /// [`Error::PayloadTooLarge`](courier_core::Error::PayloadTooLarge)
    /// before anything is sent. The broker has
    /// its own limit (`message.max.bytes`); a record it refuses fails the
    /// same way.
    pub max_payload: usize,
    /// How often a consumer commits the offsets its acks made committable
    /// (default 100 ms); a commit is waited for before the next is made,
    /// so a broker slower than this commits less often. Commits are also
    /// made, and waited for, when a partition is revoked and when the
    /// subscription ends.
    pub commit_interval: Duration,
    /// How long a consumer whose partitions are being revoked (another
    /// member joined or left the group) waits for the deliveries it handed
    /// out to be settled before it gives the partitions up (default 30 s).
    /// Deliveries settled later are not committed by it: they come back to
    /// the partition's next owner.
    pub revoke_timeout: Duration,
    /// How long the broker waits for a silent consumer before it gives its
    /// partitions to the rest of the group (`session.timeout.ms`, default
    /// 10 s; URL option `session_timeout`). Heartbeats go every third of it
    /// (at most every 3 s). A broker that answers heartbeats later than this
    /// under load takes the member's partitions away and the group
    /// rebalances; raise it for such a broker, at the price of a crashed
    /// member's partitions waiting that long for another member.
    pub session_timeout: Duration,
    /// Extra rdkafka properties for every client, applied last
    /// (`("security.protocol", "ssl")`, ...).
    pub rdkafka: Vec<(String, String)>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rdkafka: Vec<(&str, &str)> = self
            .rdkafka
            .iter()
            .map(|(name, value)| {
                let shown = if is_secret_option(name) { "***" } else { value };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("client_id", &self.client_id)
            .field("create_topics", &self.create_topics)
            .field("delete_reply_topic", &self.delete_reply_topic)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("max_payload", &self.max_payload)
            .field("commit_interval", &self.commit_interval)
            .field("revoke_timeout", &self.revoke_timeout)
            .field("session_timeout", &self.session_timeout)
            .field("rdkafka", &rdkafka)
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "localhost:9092".to_owned(),
            client_id: "courier".to_owned(),
            create_topics: true,
            delete_reply_topic: false,
            partitions: 1,
            replication_factor: 1,
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(30),
            max_payload: 8 * 1024 * 1024,
            commit_interval: Duration::from_millis(100),
            revoke_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_secs(10),
            rdkafka: Vec::new(),
        }
    }
}

impl KafkaConfig {
    /// Settings for these bootstrap servers (`host:port[,host:port...]`).
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            ..KafkaConfig::default()
        }
    }

    /// Settings from a `kafka://host:port[,host:port...][?options]` URL:
    /// the host list is read as written, the options percent-decoded.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`](courier_core::Error::InvalidUrl) for another
    /// scheme, no host, a host without a port, credentials (SASL is
    /// configured through [`KafkaConfig::rdkafka`]), or an unknown or
    /// malformed option.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use courier_kafka::KafkaConfig;
    /// let config = KafkaConfig::from_url("kafka://k1:9092,k2:9092?partitions=6&connect_timeout=30s")?;
    /// assert_eq!(config.bootstrap_servers, "k1:9092,k2:9092");
    /// assert_eq!((config.partitions, config.connect_timeout), (6, Duration::from_secs(30)));
    /// # Ok::<(), courier_core::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self> {
        let invalid = |reason: String| broker_url::invalid(url, reason);
        let rest = url
            .split_once("://")
            .filter(|(scheme, _)| SCHEMES.contains(scheme))
            .map(|(_, rest)| rest)
            .ok_or_else(|| invalid("expected kafka://host:port[,host:port...]".into()))?;
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let hosts = rest.split_once('?').map_or(rest, |(hosts, _)| hosts);
        let hosts = hosts.trim_end_matches('/');
        if hosts.contains('@') {
            return Err(invalid(
                "credentials in the URL are not supported; set SASL through KafkaConfig::rdkafka"
                    .into(),
            ));
        }
        if hosts.is_empty() {
            return Err(invalid("no bootstrap server".into()));
        }
        for host in hosts.split(',') {
            let port = host.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            match port {
                Some((h, Ok(_))) if !h.is_empty() => {}
                _ => return Err(invalid(format!("{host:?} is not host:port"))),
            }
        }
        let mut config = KafkaConfig::new(hosts);
        for option in broker_url::options(url)? {
            config.apply(&option)?;
        }
        Ok(config)
    }

    fn apply(&mut self, option: &UrlOption<'_>) -> Result<()> {
        let shared = SharedOptions {
            connect_timeout: Some(&mut self.connect_timeout),
            client_name: Some(&mut self.client_id),
            publish_timeout: Some(&mut self.publish_timeout),
            // Checked, no effect: the topic keeps every message for later
            // groups, so nothing is unroutable (see the crate documentation).
            unroutable: None,
        };
        if shared.apply(option)? {
            return Ok(());
        }
        match option.key() {
            "partitions" => self.partitions = option.number(1..)?,
            // Kafka's replication factor is a 16-bit number.
            "replication_factor" => {
                self.replication_factor = option.number(1..=i32::from(i16::MAX))?
            }
            "create_topics" => self.create_topics = option.flag()?,
            "delete_reply_topic" => self.delete_reply_topic = option.flag()?,
            "session_timeout" => self.session_timeout = session_timeout(option)?,
            _ => return Err(option.unknown(URL_OPTIONS)),
        }
        Ok(())
    }

    /// Sets [`KafkaConfig::create_topics`].
    pub fn create_topics(mut self, create: bool) -> Self {
        self.create_topics = create;
        self
    }

    /// Sets [`KafkaConfig::delete_reply_topic`].
    pub fn delete_reply_topic(mut self, delete: bool) -> Self {
        self.delete_reply_topic = delete;
        self
    }

    /// Sets [`KafkaConfig::partitions`].
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Sets [`KafkaConfig::replication_factor`].
    pub fn replication_factor(mut self, factor: i32) -> Self {
        self.replication_factor = factor.max(1);
        self
    }

    /// Sets [`KafkaConfig::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`KafkaConfig::publish_timeout`].
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets [`KafkaConfig::max_payload`].
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Sets [`KafkaConfig::commit_interval`].
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Sets [`KafkaConfig::revoke_timeout`].
    pub fn revoke_timeout(mut self, timeout: Duration) -> Self {
        self.revoke_timeout = timeout;
        self
    }

    /// Sets [`KafkaConfig::session_timeout`].
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Adds an rdkafka property for every client, applied after courier's own.
    pub fn rdkafka(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.rdkafka.push((name.into(), value.into()));
        self
    }

    /// The largest record courier lets rdkafka send: the payload limit plus
    /// room for the key and headers (at most 64 KiB of courier headers).
    pub(crate) fn max_record(&self) -> usize {
        self.max_payload + 128 * 1024
    }
}

/// A `session_timeout` URL option, within what rdkafka accepts
/// (`session.timeout.ms`: 1 ms to 1 h).
fn session_timeout(option: &UrlOption<'_>) -> Result<Duration> {
    let timeout = option.duration()?;
    if (Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&timeout) {
        Ok(timeout)
    } else {
        Err(option.invalid("a duration from 1ms to 1h"))
    }
}

impl FromStr for KafkaConfig {
    type Err = courier_core::Error;

    fn from_str(url: &str) -> Result<Self> {
        Self::from_url(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_core::Error;

    #[test]
    fn urls_give_servers_and_options() {
        let config = KafkaConfig::from_url("kafka://a:9092,b:9093").unwrap();
        assert_eq!(config.bootstrap_servers, "a:9092,b:9093");
        assert_eq!(config.partitions, 1);
        assert!(config.create_topics);
        let config = KafkaConfig::from_url(
            "kafka://a:1/?partitions=3&replication_factor=2&create_topics=false&client_id=svc",
        )
        .unwrap();
        assert_eq!(config.bootstrap_servers, "a:1");
        assert_eq!(
            (config.partitions, config.replication_factor),
            (3, 2),
            "{config:?}"
        );
        assert!(!config.create_topics);
        assert_eq!(config.client_id, "svc");
        let config: KafkaConfig = "kafka://[::1]:9092?connect_timeout=2m&client_name=svc%20a%2Bb\
                                   &publish_timeout=1500ms&create_topics=0&session_timeout=45s#frag"
            .parse()
            .unwrap();
        let expected = KafkaConfig::new("[::1]:9092")
            .connect_timeout(Duration::from_secs(120))
            .session_timeout(Duration::from_secs(45))
            .publish_timeout(Duration::from_millis(1500))
            .create_topics(false);
        assert_eq!(
            config,
            KafkaConfig {
                client_id: "svc a+b".into(),
                ..expected
            }
        );
    }

    #[test]
    fn debug_masks_secret_rdkafka_properties() {
        let config = KafkaConfig::new("a:1")
            .rdkafka("sasl.password", "hunter2")
            .rdkafka("security.protocol", "sasl_ssl");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("sasl_ssl") && shown.contains("sasl.password"),
            "{shown}"
        );
    }

    #[test]
    fn bad_urls_are_invalid_and_hide_passwords() {
        for url in [
            "kafka://",
            "kafka://host",
            "kafka://host:notaport",
            "kafka://a:1,:2",
            "kafka://a:1?partitions=0",
            "kafka://a:1?colour=blue",
            "kafka://a:1?replication_factor=40000",
            "kafka://a:1?create_topics=maybe",
            "kafka://a:1?connect_timeout=0",
            "kafka://a:1?session_timeout=0",
            "kafka://a:1?session_timeout=2h",
            "kafka://a:1?client_id=",
            "kafka://a:1/topic",
            "amqp://a:1",
        ] {
            let err = KafkaConfig::from_url(url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
        }
        match KafkaConfig::from_url("kafka://a:1?sasl_password=hunter2") {
            Err(Error::InvalidUrl { url, reason }) => {
                assert_eq!(url, "kafka://a:1?sasl_password=***");
                assert!(
                    reason.starts_with("unknown option \"sasl_password\""),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        let err = KafkaConfig::from_url("kafka://user:secret@a:1").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
