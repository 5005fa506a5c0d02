//! Settings of the in-process broker and the `memory://` URL.

use std::str::FromStr;
use std::time::Duration;

use courier_core::adapter::url::{self as broker_url, SharedOptions, UrlOption};
use courier_core::{Result, UnroutablePolicy};

/// The URL schemes of the in-process broker.
pub const SCHEMES: &[&str] = &["memory"];

/// The options a `memory://` URL may carry (see the crate documentation).
pub const URL_OPTIONS: &[&str] = &[
    "max_payload",
    "retention",
    "max_queue_len",
    "when_full",
    broker_url::CONNECT_TIMEOUT,
    broker_url::CLIENT_NAME,
    broker_url::CLIENT_ID,
    broker_url::PUBLISH_TIMEOUT,
    broker_url::UNROUTABLE,
];

/// Settings of a [`MemoryBroker`](crate::MemoryBroker).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// How many of the latest messages each topic keeps for groups created
    /// later with [`StartPosition::Earliest`](courier_core::StartPosition::Earliest).
    /// Messages waiting in a group's queue are never dropped, whatever this is.
    pub retention: usize,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
    /// The most messages a group may hold: waiting in its queue plus handed
    /// out and not yet settled. A publish that would take a group past it
    /// waits or fails, as [`MemoryConfig::when_full`] says. Topics without
    /// groups are bounded by [`MemoryConfig::retention`] alone.
    pub max_queue_len: usize,
    /// What a publish does when a group of its topic is full.
    pub when_full: WhenFull,
    /// How long a publish waits for room when [`WhenFull::Wait`] (the
    /// `publish_timeout` URL option); then it fails with
    /// [`Error::Timeout`](courier_core::Error::Timeout).
    pub publish_timeout: Duration,
    /// What a publish to a topic without groups does when
    /// [`MemoryConfig::retention`] is 0, so that no later group could
    /// receive the message (URL option `unroutable`): fail with
    /// [`BrokerErrorKind::Unroutable`](courier_core::BrokerErrorKind::Unroutable)
    /// ([`UnroutablePolicy::Error`], the default) or return `Ok`
    /// ([`UnroutablePolicy::Drop`]). With retention the topic keeps the
    /// message for later groups, so nothing is unroutable.
    pub unroutable: UnroutablePolicy,
}

/// What a publish does when a group of its topic holds
/// [`MemoryConfig::max_queue_len`] messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenFull {
    /// Waits until the group's consumers settle enough messages, at most
    /// [`MemoryConfig::publish_timeout`]: the publisher slows down to the
    /// consumers' pace, as with a broker's flow control.
    #[default]
    Wait,
    /// Fails at once with an [`Error::Broker`](courier_core::Error::Broker)
    /// of kind [`LimitReached`](courier_core::BrokerErrorKind::LimitReached)
    /// naming the topic and the group.
    Reject,
}

/// Default [`MemoryConfig::retention`].
pub const DEFAULT_RETENTION: usize = 10_000;
/// Default [`MemoryConfig::max_payload`]: 16 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// Default [`MemoryConfig::max_queue_len`]: 100,000 messages per group.
pub const DEFAULT_MAX_QUEUE_LEN: usize = 100_000;
/// Default [`MemoryConfig::publish_timeout`]: 30 seconds.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            retention: DEFAULT_RETENTION,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_queue_len: DEFAULT_MAX_QUEUE_LEN,
            when_full: WhenFull::Wait,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            unroutable: UnroutablePolicy::Error,
        }
    }
}

impl MemoryConfig {
    /// Sets [`MemoryConfig::retention`].
    pub fn retention(mut self, messages: usize) -> Self {
        self.retention = messages;
        self
    }

    /// Sets [`MemoryConfig::max_payload`].
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Sets [`MemoryConfig::max_queue_len`].
    pub fn max_queue_len(mut self, messages: usize) -> Self {
        self.max_queue_len = messages;
        self
    }

    /// Sets [`MemoryConfig::when_full`].
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// Sets [`MemoryConfig::publish_timeout`].
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets [`MemoryConfig::unroutable`].
    pub fn unroutable(mut self, policy: UnroutablePolicy) -> Self {
        self.unroutable = policy;
        self
    }

    /// The default settings with the options of a `memory://[name][?options]`
    /// URL applied.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`](courier_core::Error::InvalidUrl) for another
    /// scheme, a user, password, port or path, or an unknown or malformed
    /// option.
    ///
    /// # Examples
    ///
    /// ```
    /// use courier_memory::MemoryConfig;
    /// let config = MemoryConfig::from_url("memory://tests?retention=10&max_payload=1024")?;
    /// assert_eq!((config.retention, config.max_payload), (10, 1024));
    /// # Ok::<(), courier_core::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self> {
        Ok(parse_url(url)?.1)
    }
}

impl FromStr for MemoryConfig {
    type Err = courier_core::Error;

    fn from_str(url: &str) -> Result<Self> {
        Self::from_url(url)
    }
}

/// The broker name (decoded; `None` for `memory://`) and the settings of a
/// `memory://` URL.
pub(crate) fn parse_url(url: &str) -> Result<(Option<String>, MemoryConfig)> {
    let parsed = broker_url::parse(url, SCHEMES)?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(broker_url::invalid(
            url,
            "an in-process broker takes no user or password",
        ));
    }
    if parsed.port().is_some() || !matches!(parsed.path(), "" | "/") {
        return Err(broker_url::invalid(
            url,
            "expected memory:// or memory://name, without port or path",
        ));
    }
    let name = match parsed.host_str().unwrap_or_default() {
        "" => None,
        name => Some(broker_url::decode(url, "broker name", name)?),
    };
    let mut config = MemoryConfig::default();
    for option in broker_url::options(url)? {
        apply(&mut config, &option)?;
    }
    Ok((name, config))
}

fn apply(config: &mut MemoryConfig, option: &UrlOption<'_>) -> Result<()> {
    // Nothing to connect to, name, or wait for: the shared options are
    // checked, then unused, so that one URL's options work on every broker.
    let shared = SharedOptions {
        publish_timeout: Some(&mut config.publish_timeout),
        unroutable: Some(&mut config.unroutable),
        ..SharedOptions::default()
    };
    if shared.apply(option)? {
        return Ok(());
    }
    match option.key() {
        "max_payload" => config.max_payload = option.number(1..)?,
        "retention" => config.retention = option.number(0..)?,
        "max_queue_len" => config.max_queue_len = option.number(1..)?,
        "when_full" => {
            config.when_full = match option.text()? {
                "wait" => WhenFull::Wait,
                "reject" => WhenFull::Reject,
                _ => return Err(option.invalid("expected wait or reject")),
            }
        }
        _ => return Err(option.unknown(URL_OPTIONS)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_core::Error;

    #[test]
    fn urls_name_a_broker_and_set_options() {
        assert_eq!(
            parse_url("memory://").unwrap(),
            (None, MemoryConfig::default())
        );
        assert_eq!(parse_url("memory:///").unwrap().0, None);
        assert_eq!(
            parse_url("memory://a-b_c").unwrap().0.as_deref(),
            Some("a-b_c")
        );
        assert_eq!(
            parse_url("memory://my%20bus/").unwrap().0.as_deref(),
            Some("my bus")
        );
        let (name, config) =
            parse_url("memory://t?retention=0&max_payload=%31%30&connect_timeout=1s&client_id=x")
                .unwrap();
        assert_eq!(name.as_deref(), Some("t"));
        assert_eq!(config, MemoryConfig::default().retention(0).max_payload(10));
        let bounded =
            MemoryConfig::from_url("memory://?max_queue_len=5&when_full=reject&publish_timeout=2s")
                .unwrap();
        assert_eq!(
            bounded,
            MemoryConfig::default()
                .max_queue_len(5)
                .when_full(WhenFull::Reject)
                .publish_timeout(std::time::Duration::from_secs(2))
        );
        assert_eq!(
            "memory://?retention=3"
                .parse::<MemoryConfig>()
                .unwrap()
                .retention,
            3
        );
    }

    #[test]
    fn bad_urls_are_invalid_and_name_what_is_wrong() {
        for (url, needle) in [
            ("memory://?colour=blue", "unknown option \"colour\""),
            ("memory://?max_payload=0", "option max_payload"),
            ("memory://?retention=-1", "option retention"),
            ("memory://?max_queue_len=0", "option max_queue_len"),
            ("memory://?when_full=drop", "expected wait or reject"),
            ("memory://?connect_timeout=soon", "option connect_timeout"),
            ("memory://u:p@name", "no user or password"),
            ("memory://name:1", "without port or path"),
            ("memory://name/sub", "without port or path"),
            ("nats://name", "expected the scheme memory"),
        ] {
            match parse_url(url) {
                Err(Error::InvalidUrl { reason, .. }) => {
                    assert!(reason.contains(needle), "{url}: {reason}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        let err = parse_url("memory://u:s3cret@name?token=t0ken").unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
    }
}
