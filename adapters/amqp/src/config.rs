//! Settings of the AMQP adapter and the `amqp://` URL.

use std::str::FromStr;
use std::time::Duration;

use courier_core::adapter::backoff::Backoff;
use courier_core::adapter::url::{self as broker_url, SharedOptions, UrlOption};
use courier_core::{Result, UnroutablePolicy};

/// The URL schemes of the AMQP adapter: `amqp://` and `amqps://` (TLS).
pub const SCHEMES: &[&str] = &["amqp", "amqps"];

/// The URL options lapin reads itself; courier checks their values and
/// hands them on unchanged ([`AmqpConfig::lapin_options`]).
pub const LAPIN_URL_OPTIONS: &[&str] = &[
    "heartbeat",
    "channel_max",
    "frame_max",
    "connection_timeout",
    "auth_mechanism",
];

/// The options an `amqp://` URL may carry (see the crate documentation).
pub const URL_OPTIONS: &[&str] = &[
    broker_url::CONNECT_TIMEOUT,
    broker_url::CLIENT_NAME,
    broker_url::CLIENT_ID,
    broker_url::PUBLISH_TIMEOUT,
    broker_url::UNROUTABLE,
    "queue_type",
    "single_active_consumer",
    "queue_naming",
    "reconnect_give_up",
    "heartbeat",
    "channel_max",
    "frame_max",
    "connection_timeout",
    "auth_mechanism",
];

/// How a consumer group's queue is named after its topic and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueNaming {
    /// `<topic>:<group>` (the default). `:` cannot occur in a topic or a
    /// group name, so no two (topic, group) pairs share a queue.
    #[default]
    Separated,
    /// `<topic>.<group>`, the naming of earlier versions, kept for queues
    /// that already exist. Not one-to-one: topic `orders.eu` with group
    /// `billing` and topic `orders` with group `eu.billing` share a queue,
    /// and so each other's messages.
    Dotted,
}

/// The kind of queue created for each consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// Quorum queues (the default): replicated, always persistent, and the
    /// broker counts deliveries (`x-delivery-count`), so
    /// [`Delivery::delivery_count`](courier_core::Delivery::delivery_count)
    /// is exact. A nacked message goes back to its place on RabbitMQ 4
    /// (whose quorum queues have a delivery limit) and behind the messages
    /// already queued on RabbitMQ 3; messages returned by a closed channel
    /// come first.
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
/// re-established with jittered exponential backoff
/// ([`courier_core::adapter::backoff`]: the nominal wait goes from
/// [`Reconnect::initial_delay`] doubling up to [`Reconnect::max_delay`], the
/// actual one is drawn between half of it and all of it, so that clients of
/// a restarted broker do not reconnect in lockstep), for at most
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
    /// The backoff of the reconnect and retry loops.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.initial_delay, self.max_delay)
    }

    /// The jittered wait after the `failures`-th consecutive failure.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        self.backoff().delay(failures)
    }
}

/// Settings of an [`AmqpBroker`](crate::AmqpBroker).
///
/// Every field has a default that suits RabbitMQ 3.10 and later; the URL's
/// options set several of them ([`AmqpConfig::from_url`], and the table in
/// the [crate documentation](crate#url)).
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
    /// How group queues are named (default [`QueueNaming::Separated`],
    /// `<topic>:<group>`; URL option `queue_naming=separated|dotted`).
    pub queue_naming: QueueNaming,
    /// Prefix of every exchange name (default empty: the exchange of topic
    /// `orders` is `orders`).
    pub exchange_prefix: String,
    /// Prefix of every queue name (default empty: the queue of group
    /// `billing` on topic `orders` is `orders:billing`).
    pub queue_prefix: String,
    /// Longest wait for a connection to open, TCP and AMQP handshake
    /// together (default 10 s).
    pub connect_timeout: Duration,
    /// Heartbeat interval asked of the server when the URL does not set
    /// `heartbeat` (default 10 s): a dead peer is noticed within two intervals.
    pub heartbeat: Duration,
    /// The bound on a whole publish, waiting for confirms and for a
    /// reconnect included (default 30 s); past it `publish` fails with
    /// [`Error::Timeout`](courier_core::Error::Timeout) (the message may
    /// have been stored). `provision` and `subscribe` (their declarations
    /// and the consume, reconnecting included) are bounded by it too.
    pub confirm_timeout: Duration,
    /// Reconnection after a lost connection.
    pub reconnect: Reconnect,
    /// What `publish` does when no group's queue is bound to the topic's
    /// exchange (URL option `unroutable`): with
    /// [`UnroutablePolicy::Error`] (the default) messages are published
    /// with `mandatory`, and one RabbitMQ returns fails the publish with
    /// [`BrokerErrorKind::Unroutable`](courier_core::BrokerErrorKind::Unroutable);
    /// with [`UnroutablePolicy::Drop`] RabbitMQ drops it and `publish`
    /// returns `Ok`.
    pub unroutable: UnroutablePolicy,
    /// The largest payload accepted, in bytes (default 128 MiB, RabbitMQ's
    /// default `max_message_size`).
    pub max_payload: usize,
    /// Name shown for the connections in RabbitMQ's management UI (default
    /// `courier`; `-publisher` and `-subscriber` are appended).
    pub connection_name: String,
    /// Options of the URL that lapin reads itself (one of
    /// [`LAPIN_URL_OPTIONS`]), name and value, handed to it as they are
    /// (default none).
    pub lapin_options: Vec<(String, String)>,
}

/// Default [`AmqpConfig::max_payload`]: 128 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 128 * 1024 * 1024;

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            queue_type: QueueType::default(),
            single_active_consumer: false,
            queue_naming: QueueNaming::Separated,
            exchange_prefix: String::new(),
            queue_prefix: String::new(),
            connect_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(30),
            reconnect: Reconnect::default(),
            unroutable: UnroutablePolicy::Error,
            max_payload: DEFAULT_MAX_PAYLOAD,
            connection_name: "courier".to_owned(),
            lapin_options: Vec::new(),
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

    /// Sets [`AmqpConfig::queue_naming`].
    pub fn queue_naming(mut self, naming: QueueNaming) -> Self {
        self.queue_naming = naming;
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

    /// Sets [`AmqpConfig::unroutable`].
    pub fn unroutable(mut self, policy: UnroutablePolicy) -> Self {
        self.unroutable = policy;
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

    /// The default settings with the options of an `amqp://` or `amqps://`
    /// URL applied.
    ///
    /// # Errors
    ///
    /// As [`AmqpConfig::apply_url`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use courier_amqp::{AmqpConfig, QueueType};
    /// let config = AmqpConfig::from_url("amqp://app:pw@rabbit/%2f?queue_type=classic&publish_timeout=5s")?;
    /// assert_eq!(config.queue_type, QueueType::Classic);
    /// assert_eq!(config.confirm_timeout, Duration::from_secs(5));
    /// # Ok::<(), courier_core::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self> {
        AmqpConfig::default().apply_url(url)
    }

    /// These settings with the options of `url` applied over them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`](courier_core::Error::InvalidUrl) for another
    /// scheme, a user, password or virtual host that does not decode, or an
    /// unknown or malformed option.
    pub fn apply_url(mut self, url: &str) -> Result<Self> {
        let parsed = broker_url::parse(url, SCHEMES)?;
        broker_url::decode(url, "user", parsed.username())?;
        broker_url::decode(url, "password", parsed.password().unwrap_or_default())?;
        broker_url::decode(
            url,
            "virtual host",
            parsed.path().get(1..).unwrap_or_default(),
        )?;
        for option in broker_url::options(url)? {
            self.apply(&option)?;
        }
        Ok(self)
    }

    fn apply(&mut self, option: &UrlOption<'_>) -> Result<()> {
        let shared = SharedOptions {
            connect_timeout: Some(&mut self.connect_timeout),
            client_name: Some(&mut self.connection_name),
            publish_timeout: Some(&mut self.confirm_timeout),
            unroutable: Some(&mut self.unroutable),
        };
        if shared.apply(option)? {
            return Ok(());
        }
        match option.key() {
            "queue_type" => {
                self.queue_type = option.choice(&[
                    ("quorum", QueueType::Quorum),
                    ("classic", QueueType::Classic),
                ])?;
            }
            "single_active_consumer" => self.single_active_consumer = option.flag()?,
            "reconnect_give_up" => self.reconnect.give_up_after = option.duration()?,
            "queue_naming" => {
                self.queue_naming = option.choice(&[
                    ("separated", QueueNaming::Separated),
                    ("dotted", QueueNaming::Dotted),
                ])?;
            }
            "heartbeat" | "channel_max" => {
                self.pass_to_lapin(option, option.number(0..=u16::MAX))?;
            }
            "frame_max" => self.pass_to_lapin(option, option.number(0..=u32::MAX))?,
            "connection_timeout" => self.pass_to_lapin(option, option.number::<u64>(1..))?,
            "auth_mechanism" => {
                let mechanism = option
                    .value()
                    .parse::<lapin::uri::SASLMechanism>()
                    .map_err(|_| {
                        option
                            .invalid("one of plain, amqplain, external, anonymous, rabbit-cr-demo")
                    });
                self.pass_to_lapin(option, mechanism)?;
            }
            _ => return Err(option.unknown(URL_OPTIONS)),
        }
        Ok(())
    }

    /// Keeps a lapin option whose value `checked` found good.
    fn pass_to_lapin<T>(&mut self, option: &UrlOption<'_>, checked: Result<T>) -> Result<()> {
        checked?;
        self.lapin_options.retain(|(name, _)| name != option.name());
        self.lapin_options
            .push((option.name().to_owned(), option.value().to_owned()));
        Ok(())
    }

    /// The URL lapin connects with: `url` with [`AmqpConfig::lapin_options`]
    /// set (lapin passes over courier's own options).
    pub(crate) fn lapin_url(&self, url: &str) -> String {
        let options: Vec<(&str, &str)> = self
            .lapin_options
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        broker_url::set_options(url, &options)
    }
}

impl FromStr for AmqpConfig {
    type Err = courier_core::Error;

    fn from_str(url: &str) -> Result<Self> {
        Self::from_url(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_core::Error;
    use lapin::uri::AMQPUri;

    #[test]
    fn url_options_set_the_config() {
        let config = AmqpConfig::from_url(
            "amqp://u:p@h/%2f?heartbeat=5&queue_type=classic&single_active_consumer=true\
             &connect_timeout=2m&client_name=svc%20a&publish_timeout=500ms&frame_max=131072\
             &reconnect_give_up=5s&unroutable=drop",
        )
        .unwrap();
        let mut expected = AmqpConfig::default()
            .reconnect(Reconnect::default().give_up_after(Duration::from_secs(5)))
            .unroutable(UnroutablePolicy::Drop)
            .queue_type(QueueType::Classic)
            .single_active_consumer(true)
            .connect_timeout(Duration::from_secs(120))
            .connection_name("svc a")
            .confirm_timeout(Duration::from_millis(500));
        expected.lapin_options = vec![
            ("heartbeat".into(), "5".into()),
            ("frame_max".into(), "131072".into()),
        ];
        assert_eq!(config, expected);
        let config = AmqpConfig::default()
            .queue_type(QueueType::Classic)
            .apply_url("amqps://h?client_id=x")
            .unwrap();
        assert_eq!(
            config.queue_type,
            QueueType::Classic,
            "kept where the URL is silent"
        );
        assert_eq!(config.connection_name, "x");
        assert_eq!(
            "amqp://h".parse::<AmqpConfig>().unwrap(),
            AmqpConfig::default()
        );
    }

    #[test]
    fn lapin_gets_the_decoded_url_and_its_own_options() {
        let url = "amqp://us%65r:p%40ss@h:5673/my%2fvhost?queue_type=classic&channel_max=9";
        let mut config = AmqpConfig::from_url(url).unwrap();
        config.lapin_options.push(("heartbeat".into(), "7".into()));
        let lapin_url = config.lapin_url(url);
        assert_eq!(lapin_url, format!("{url}&heartbeat=7"));
        let uri: AMQPUri = lapin_url.parse().unwrap();
        assert_eq!(uri.authority.userinfo.username, "user");
        assert_eq!(uri.authority.userinfo.password, "p@ss");
        assert_eq!(uri.vhost, "my/vhost");
        assert_eq!(
            (uri.query.channel_max, uri.query.heartbeat),
            (Some(9), Some(7))
        );
        assert_eq!(
            AmqpConfig::default().lapin_url("amqp://h/%2f"),
            "amqp://h/%2f"
        );
    }

    #[test]
    fn bad_urls_are_invalid_and_name_what_is_wrong() {
        for (url, needle) in [
            ("amqp://h?colour=blue", "unknown option \"colour\""),
            ("amqp://h?x=1", "unknown option \"x\""),
            (
                "amqp://h?queue_type=stream",
                "option queue_type: expected one of quorum, classic",
            ),
            (
                "amqp://h?single_active_consumer=yes",
                "option single_active_consumer",
            ),
            ("amqp://h?heartbeat=70000", "option heartbeat"),
            ("amqp://h?auth_mechanism=kerberos", "option auth_mechanism"),
            ("amqp://h?connect_timeout=-1", "option connect_timeout"),
            ("amqp://h/%ff", "virtual host is not UTF-8"),
            ("nats://h", "expected the scheme amqp or amqps"),
        ] {
            match AmqpConfig::from_url(url) {
                Err(Error::InvalidUrl { reason, .. }) => {
                    assert!(reason.contains(needle), "{url}: {reason}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        let err = AmqpConfig::from_url("amqp://u:s3cret@h?queue_type=stream").unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("stream"),
            "{shown}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_limit_with_jitter() {
        let r = Reconnect::default()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1));
        for (failures, nominal) in [(1, 100), (2, 200), (4, 800), (5, 1000), (500, 1000)] {
            let nominal = Duration::from_millis(nominal);
            let wait = r.delay(failures);
            assert!(
                wait >= nominal / 2 && wait <= nominal,
                "{failures}: {wait:?}"
            );
        }
    }
}
