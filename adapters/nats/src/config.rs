//! Settings of the NATS JetStream adapter and the `nats://` URL.

use std::str::FromStr;
use std::time::Duration;

use courier_core::Result;
use courier_core::adapter::url::{self as broker_url, SharedOptions, UrlOption};

/// The URL schemes of the NATS adapter: `nats://` and `tls://` (TLS
/// required).
pub const SCHEMES: &[&str] = &["nats", "tls"];

/// The options a `nats://` URL may carry (see the crate documentation).
pub const URL_OPTIONS: &[&str] = &[
    broker_url::CONNECT_TIMEOUT,
    broker_url::CLIENT_NAME,
    broker_url::CLIENT_ID,
    broker_url::PUBLISH_TIMEOUT,
    broker_url::UNROUTABLE,
    "storage",
    "duplicate_window",
    "ack_wait",
    "max_deliver",
    "max_ack_pending",
];

/// How JetStream stores a topic's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Storage {
    /// On disk: survives a server restart (the default).
    #[default]
    File,
    /// In memory: lost on restart.
    Memory,
}

/// Settings of a [`NatsBroker`](crate::NatsBroker).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsConfig {
    /// How long connecting may take before it fails with
    /// `ConnectErrorKind::TimedOut` (default 5 s).
    pub connect_timeout: Duration,
    /// The client name the server shows for the connection (default
    /// `courier`).
    pub client_name: String,
    /// The bound on a publish call as a whole (stream declaration, sending,
    /// the JetStream acks), on a settlement (sending it and the server's
    /// confirmation), on sending a reply, and on `provision`, `subscribe`
    /// and `lag` as a whole (default 10 s).
    pub request_timeout: Duration,
    /// Storage of streams courier creates.
    pub storage: Storage,
    /// The server's duplicate window for streams courier creates: a message
    /// published again with the same id within it is stored once (default 2 min,
    /// the server's own default).
    pub duplicate_window: Duration,
    /// How long the server waits for a settlement before it redelivers
    /// (default 30 s). A handler that runs longer sees its message again.
    pub ack_wait: Duration,
    /// How often the server delivers a message before it gives up; `None`
    /// for no limit (the default: the consumer runtime dead-letters instead).
    pub max_deliver: Option<u32>,
    /// Unsettled messages the server lets one consumer group hold
    /// (default 10,000); each stream also keeps to its own prefetch.
    pub max_ack_pending: u32,
    /// How long a pull request waits on the server for messages before it is
    /// renewed (default 1 s). Closing a connection or dropping a stream
    /// lets the pending request run out, so this bounds how long `close` takes.
    pub pull_expiry: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            connect_timeout: Duration::from_secs(5),
            client_name: "courier".to_owned(),
            request_timeout: Duration::from_secs(10),
            storage: Storage::File,
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            max_ack_pending: 10_000,
            pull_expiry: Duration::from_secs(1),
        }
    }
}

impl NatsConfig {
    /// Sets [`NatsConfig::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`NatsConfig::client_name`].
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// Sets [`NatsConfig::request_timeout`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`NatsConfig::max_ack_pending`].
    pub fn max_ack_pending(mut self, pending: u32) -> Self {
        self.max_ack_pending = pending;
        self
    }

    /// The default settings with the options of a `nats://` or `tls://` URL
    /// applied.
    ///
    /// # Errors
    ///
    /// As [`NatsConfig::apply_url`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use courier_nats::{NatsConfig, Storage};
    /// let config = NatsConfig::from_url("nats://localhost:4222?storage=memory&ack_wait=1m")?;
    /// assert_eq!(config.storage, Storage::Memory);
    /// assert_eq!(config.ack_wait, Duration::from_secs(60));
    /// # Ok::<(), courier_core::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self> {
        NatsConfig::default().apply_url(url)
    }

    /// These settings with the options of `url` applied over them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`](courier_core::Error::InvalidUrl) for another
    /// scheme, no host, a path, credentials that do not decode, or an
    /// unknown or malformed option.
    pub fn apply_url(mut self, url: &str) -> Result<Self> {
        Endpoint::parse(url)?;
        for option in broker_url::options(url)? {
            self.apply(&option)?;
        }
        Ok(self)
    }

    fn apply(&mut self, option: &UrlOption<'_>) -> Result<()> {
        let shared = SharedOptions {
            connect_timeout: Some(&mut self.connect_timeout),
            client_name: Some(&mut self.client_name),
            publish_timeout: Some(&mut self.request_timeout),
            // Checked, no effect: the topic keeps every message for later
            // groups, so nothing is unroutable (see the crate documentation).
            unroutable: None,
        };
        if shared.apply(option)? {
            return Ok(());
        }
        match option.key() {
            "storage" => {
                self.storage =
                    option.choice(&[("file", Storage::File), ("memory", Storage::Memory)])?;
            }
            "duplicate_window" => self.duplicate_window = option.duration()?,
            "ack_wait" => self.ack_wait = option.duration()?,
            "max_deliver" => self.max_deliver = Some(option.number(1..)?),
            "max_ack_pending" => self.max_ack_pending = option.number(1..)?,
            _ => return Err(option.unknown(URL_OPTIONS)),
        }
        Ok(())
    }

    /// Sets [`NatsConfig::storage`].
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Sets [`NatsConfig::duplicate_window`].
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Sets [`NatsConfig::ack_wait`].
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Sets [`NatsConfig::max_deliver`].
    pub fn max_deliver(mut self, max_deliver: Option<u32>) -> Self {
        self.max_deliver = max_deliver;
        self
    }
}

impl FromStr for NatsConfig {
    type Err = courier_core::Error;

    fn from_str(url: &str) -> Result<Self> {
        Self::from_url(url)
    }
}

/// Where to connect and as whom: the URL without user part, query and
/// fragment, and what the user part held. No `Debug`: it holds secrets.
pub(crate) struct Endpoint {
    pub(crate) address: String,
    pub(crate) credentials: Credentials,
}

/// The user part of a NATS URL, decoded.
pub(crate) enum Credentials {
    None,
    /// `nats://TOKEN@host`.
    Token(String),
    /// `nats://user:password@host`.
    UserPassword(String, String),
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let mut parsed = broker_url::parse(url, SCHEMES)?;
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(broker_url::invalid(url, "no host"));
        }
        if !matches!(parsed.path(), "" | "/") {
            return Err(broker_url::invalid(
                url,
                "a NATS URL has no path: nats://[user:password@]host[:port][?options]",
            ));
        }
        let user = broker_url::decode(url, "user", parsed.username())?;
        let credentials = match parsed.password() {
            Some(password) => {
                Credentials::UserPassword(user, broker_url::decode(url, "password", password)?)
            }
            None if !user.is_empty() => Credentials::Token(user),
            None => Credentials::None,
        };
        let stripped = parsed
            .set_username("")
            .and_then(|()| parsed.set_password(None));
        if stripped.is_err() {
            return Err(broker_url::invalid(url, "cannot remove the credentials"));
        }
        parsed.set_query(None);
        parsed.set_fragment(None);
        Ok(Endpoint {
            address: parsed.to_string(),
            credentials,
        })
    }
}

/// The JetStream stream for a topic: the topic with `.` replaced by `_`
/// (stream names cannot hold `.`). `orders.placed` → `orders_placed`.
pub fn stream_name(topic: &str) -> String {
    topic.replace('.', "_")
}

/// The durable consumer for a group: the group with `.` replaced by `_`.
pub fn consumer_name(group: &str) -> String {
    group.replace('.', "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_core::Error;

    #[test]
    fn url_options_set_the_config() {
        let config = NatsConfig::from_url(
            "nats://h:4222/?connect_timeout=1500ms&client_name=svc%20a&publish_timeout=3s\
             &storage=memory&duplicate_window=1m&ack_wait=45&max_deliver=5&max_ack_pending=7",
        )
        .unwrap();
        let expected = NatsConfig::default()
            .connect_timeout(Duration::from_millis(1500))
            .client_name("svc a")
            .request_timeout(Duration::from_secs(3))
            .storage(Storage::Memory)
            .duplicate_window(Duration::from_secs(60))
            .ack_wait(Duration::from_secs(45))
            .max_deliver(Some(5))
            .max_ack_pending(7);
        assert_eq!(config, expected);
        assert_eq!(
            NatsConfig::from_url("tls://h").unwrap(),
            NatsConfig::default()
        );
        let base = NatsConfig::default().ack_wait(Duration::from_secs(9));
        let applied = base.apply_url("nats://h?client_id=x").unwrap();
        assert_eq!(
            (applied.ack_wait, applied.client_name.as_str()),
            (Duration::from_secs(9), "x")
        );
    }

    #[test]
    fn bad_urls_are_invalid_and_name_what_is_wrong() {
        for (url, needle) in [
            ("nats://h?colour=blue", "unknown option \"colour\""),
            ("nats://h?token=t0ken", "unknown option \"token\""),
            (
                "nats://h?storage=disk",
                "option storage: expected one of file, memory",
            ),
            ("nats://h?max_deliver=0", "option max_deliver"),
            ("nats://h?ack_wait=0", "option ack_wait"),
            ("nats://h/path", "no path"),
            ("nats://", "no host"),
            ("amqp://h", "expected the scheme nats or tls"),
            ("nats://u:%ff@h", "password is not UTF-8"),
        ] {
            match NatsConfig::from_url(url) {
                Err(Error::InvalidUrl { reason, .. }) => {
                    assert!(reason.contains(needle), "{url}: {reason}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn credentials_are_decoded_and_taken_out_of_the_address() {
        let endpoint = Endpoint::parse("nats://us%65r:p%40ss+w@h:4222/?storage=file#x").unwrap();
        assert_eq!(endpoint.address, "nats://h:4222/");
        assert!(matches!(
            endpoint.credentials,
            Credentials::UserPassword(ref u, ref p) if u == "user" && p == "p@ss+w"
        ));
        let endpoint = Endpoint::parse("tls://s3cr%2Ft@h").unwrap();
        assert_eq!(endpoint.address, "tls://h");
        assert!(matches!(endpoint.credentials, Credentials::Token(ref t) if t == "s3cr/t"));
        let endpoint = Endpoint::parse("nats://h").unwrap();
        assert!(matches!(endpoint.credentials, Credentials::None));
    }
}
