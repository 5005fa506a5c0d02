//! Settings of the AMQP adapter.

use std::time::Duration;

use courier_core::error::redact_url;
use courier_core::{Error, Result};

/// The kind of queue created for each consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// Quorum queues (the default): replicated, always persistent, and the
    /// broker counts deliveries (`x-delivery-count`), so
    /// [`Delivery::delivery_count`](courier_core::Delivery::delivery_count)
    /// is exact. A nacked message goes behind the messages already queued
    /// (RabbitMQ 3.10); messages returned by a closed channel come first.
    #[default]
    Quorum,
    /// Classic durable queues: lighter on a single node, and a requeued
    /// message goes back to its place; but the broker only says whether a
    /// message was delivered before, so
    /// [`Delivery::delivery_count`](courier_core::Delivery::delivery_count)
    /// is `None`.
    Classic,
}

impl QueueType {
    /// The value of the `x-queue-type` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// How the adapter reconnects after it lost its connection.
///
/// The first connection is not retried: [`AmqpBroker::connect`](crate::AmqpBroker::connect)
/// reports a typed error at once. Once connected, a lost connection is
/// re-established with exponential backoff, from [`Reconnect::initial_delay`]
/// doubling up to [`Reconnect::max_delay`], for at most
/// [`Reconnect::give_up_after`]; then the waiting operations fail with the
/// last connection error, and the next operation starts trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconnect {
    /// Delay before the second attempt (the first is immediate).
    pub initial_delay: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
    /// How long to keep trying before giving up.
    pub give_up_after: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(3),
            give_up_after: Duration::from_secs(120),
        }
    }
}

impl Reconnect {
    /// Sets [`Reconnect::initial_delay`].
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets [`Reconnect::max_delay`].
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets [`Reconnect::give_up_after`].
    pub fn give_up_after(mut self, limit: Duration) -> Self {
        self.give_up_after = limit;
        self
    }

    /// The delay after `failures` failed attempts in a row.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }
}

/// Settings of an [`AmqpBroker`](crate::AmqpBroker).
///
/// Every field has a default that suits RabbitMQ 3.10 and later; the URL
/// given to `courier::connect` may set [`AmqpConfig::queue_type`] and
/// [`AmqpConfig::single_active_consumer`] with the query parameters
/// `queue_type=classic|quorum` and `single_active_consumer=true|false`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpConfig {
    /// The kind of queue created for consumer groups (default: quorum).
    pub queue_type: QueueType,
    /// Declare group queues with `x-single-active-consumer`: of several
    /// subscriptions to one group only one receives at a time (the others
    /// take over when it goes), so a group keeps publish order even with
    /// standby consumers. Default `false` (competing consumers).
    pub single_active_consumer: bool,
    /// Prefix of every exchange name (default empty: the exchange of topic
    /// `orders` is `orders`).
    pub exchange_prefix: String,
    /// Prefix of every queue name (default empty: the queue of group
    /// `billing` on topic `orders` is `orders.billing`).
    pub queue_prefix: String,
    /// Longest wait for a connection to open, TCP and AMQP handshake
    /// together (default 10 s).
    pub connect_timeout: Duration,
    /// Heartbeat interval asked of the server when the URL does not set
    /// `heartbeat` (default 10 s): a dead peer is noticed within two intervals.
    pub heartbeat: Duration,
    /// Longest wait for a publisher confirm (default 30 s); then `publish`
    /// fails with [`Error::Timeout`] (the message may have been stored).
    pub confirm_timeout: Duration,
    /// Reconnection after a lost connection.
    pub reconnect: Reconnect,
    /// The largest payload accepted, in bytes (default 128 MiB, RabbitMQ's
    /// default `max_message_size`).
    pub max_payload: usize,
    /// Name shown for the connections in RabbitMQ's management UI (default
    /// `courier`; `-publisher` and `-subscriber` are appended).
    pub connection_name: String,
}

/// Default [`AmqpConfig::max_payload`]: 128 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 128 * 1024 * 1024;

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            queue_type: QueueType::default(),
            single_active_consumer: false,
            exchange_prefix: String::new(),
            queue_prefix: String::new(),
            connect_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(30),
            reconnect: Reconnect::default(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            connection_name: "courier".to_owned(),
        }
    }
}

impl AmqpConfig {
    /// Sets [`AmqpConfig::queue_type`].
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Sets [`AmqpConfig::single_active_consumer`].
    pub fn single_active_consumer(mut self, on: bool) -> Self {
        self.single_active_consumer = on;
        self
    }

    /// Sets [`AmqpConfig::exchange_prefix`].
    pub fn exchange_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.exchange_prefix = prefix.into();
        self
    }

    /// Sets [`AmqpConfig::queue_prefix`].
    pub fn queue_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.queue_prefix = prefix.into();
        self
    }

    /// Sets [`AmqpConfig::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`AmqpConfig::heartbeat`].
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// Sets [`AmqpConfig::confirm_timeout`].
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Sets [`AmqpConfig::reconnect`].
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Sets [`AmqpConfig::max_payload`].
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Sets [`AmqpConfig::connection_name`].
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Takes courier's own query parameters (`queue_type`,
    /// `single_active_consumer`) out of `url` into this configuration and
    /// returns the URL for the AMQP client.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for an unknown value of one of these parameters.
    pub fn apply_url_options(&mut self, url: &str) -> Result<String> {
        let Some((base, query)) = url.split_once('?') else {
            return Ok(url.to_owned());
        };
        let (query, fragment) = match query.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (query, None),
        };
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact_url(url),
            reason,
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "queue_type" => {
                    self.queue_type = match value {
                        "quorum" => QueueType::Quorum,
                        "classic" => QueueType::Classic,
                        other => {
                            return Err(invalid(format!(
                                "queue_type must be quorum or classic, not {other:?}"
                            )));
                        }
                    }
                }
                "single_active_consumer" => {
                    self.single_active_consumer = match value {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        other => {
                            return Err(invalid(format!(
                                "single_active_consumer must be true or false, not {other:?}"
                            )));
                        }
                    }
                }
                _ => kept.push(pair),
            }
        }
        let mut out = base.to_owned();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
        if let Some(fragment) = fragment {
            out.push('#');
            out.push_str(fragment);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_are_taken_out() {
        let mut config = AmqpConfig::default();
        let url = config
            .apply_url_options(
                "amqp://u:p@h/%2f?heartbeat=5&queue_type=classic&single_active_consumer=true",
            )
            .unwrap();
        assert_eq!(url, "amqp://u:p@h/%2f?heartbeat=5");
        assert_eq!(config.queue_type, QueueType::Classic);
        assert!(config.single_active_consumer);
        let url = config
            .apply_url_options("amqp://h?queue_type=quorum")
            .unwrap();
        assert_eq!(url, "amqp://h");
        assert_eq!(config.queue_type, QueueType::Quorum);
    }

    #[test]
    fn bad_url_options_name_the_url_without_password() {
        let err = AmqpConfig::default()
            .apply_url_options("amqp://u:secret@h?queue_type=stream")
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
        assert!(
            !text.contains("secret") && text.contains("stream"),
            "{text}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let r = Reconnect::default()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1));
        assert_eq!(r.delay(1), Duration::from_millis(100));
        assert_eq!(r.delay(2), Duration::from_millis(200));
        assert_eq!(r.delay(4), Duration::from_millis(800));
        assert_eq!(r.delay(5), Duration::from_secs(1));
        assert_eq!(r.delay(500), Duration::from_secs(1));
    }
}
