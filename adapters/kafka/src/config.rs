//! Settings of the Kafka adapter and the `kafka://` URL.

use std::time::Duration;

use courier_core::error::redact_url;
use courier_core::{Error, Result};

/// Settings of a [`KafkaBroker`](crate::KafkaBroker).
///
/// `kafka://host:port,host:port?partitions=3&create_topics=false` sets the
/// bootstrap servers and, optionally, [`KafkaConfig::partitions`],
/// [`KafkaConfig::replication_factor`], [`KafkaConfig::create_topics`] and
/// [`KafkaConfig::client_id`] (`client_id=`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`, as rdkafka's `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// The client id the broker sees (default `courier`).
    pub client_id: String,
    /// Create a topic that does not exist when it is first published to or
    /// subscribed (default `true`). When `false`, such a topic is
    /// [`Error::TopicNotFound`].
    pub create_topics: bool,
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
    /// with [`Error::Timeout`].
    pub publish_timeout: Duration,
    /// Largest payload accepted (default 8 MiB). Larger payloads fail with
    /// [`Error::PayloadTooLarge`] before anything is sent. The broker has
    /// its own limit (`message.max.bytes`); a record it refuses fails the
    /// same way.
    pub max_payload: usize,
    /// How often a consumer commits the offsets its acks made committable
    /// (default 100 ms). Commits are also made, and waited for, when a
    /// partition is revoked and when the subscription ends.
    pub commit_interval: Duration,
    /// How long a consumer whose partitions are being revoked (another
    /// member joined or left the group) waits for the deliveries it handed
    /// out to be settled before it gives the partitions up (default 30 s).
    /// Deliveries settled later are not committed by it: they come back to
    /// the partition's next owner.
    pub revoke_timeout: Duration,
    /// How long the broker waits for a silent consumer before it gives its
    /// partitions to the rest of the group (`session.timeout.ms`, default
    /// 10 s).
    pub session_timeout: Duration,
    /// Extra rdkafka properties for every client, applied last
    /// (`("security.protocol", "ssl")`, ...).
    pub rdkafka: Vec<(String, String)>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "localhost:9092".to_owned(),
            client_id: "courier".to_owned(),
            create_topics: true,
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

    /// Settings from a `kafka://host:port,host:port[?option=value&...]` URL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for another scheme, no host, a host without a
    /// port, credentials (SASL is configured through
    /// [`KafkaConfig::rdkafka`]), or an unknown or malformed option.
    pub fn from_url(url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| invalid("expected kafka://host:port[,host:port...]".into()))?;
        let (hosts, query) = match rest.split_once('?') {
            Some((hosts, query)) => (hosts, Some(query)),
            None => (rest, None),
        };
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
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = || invalid(format!("bad value {value:?} for {name}"));
            match name {
                "partitions" => {
                    config.partitions = value.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?;
                }
                "replication_factor" => {
                    config.replication_factor =
                        value.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?;
                }
                "create_topics" => config.create_topics = value.parse().map_err(|_| bad())?,
                "client_id" if !value.is_empty() => config.client_id = value.to_owned(),
                _ => return Err(invalid(format!("unknown option {name:?}"))),
            }
        }
        Ok(config)
    }

    /// Sets [`KafkaConfig::create_topics`].
    pub fn create_topics(mut self, create: bool) -> Self {
        self.create_topics = create;
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

#[cfg(test)]
mod tests {
    use super::*;

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
            "amqp://a:1",
        ] {
            let err = KafkaConfig::from_url(url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
        }
        let err = KafkaConfig::from_url("kafka://user:secret@a:1").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
