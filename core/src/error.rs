//! The error type shared by every courier crate's public traits.
//!
//! Each variant says what kind of failure happened so callers can branch
//! without parsing text; [`Error::is_retryable`] tells whether trying the same
//! operation again may succeed. Broker-specific causes are kept as `source`.

use std::fmt;
use std::time::Duration;

use crate::headers::HeaderError;
use crate::id::MessageId;
use crate::name::InvalidName;

/// A boxed error from a broker client or other dependency.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with courier's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a connection could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The host name did not resolve or the host could not be reached.
    Unreachable,
    /// The host refused the connection (nothing listens on the port).
    Refused,
    /// No answer within the connect timeout.
    TimedOut,
    /// The broker rejected the credentials.
    Authentication,
    /// The credentials were accepted but lack a permission.
    Authorization,
    /// A named resource does not exist (an AMQP virtual host, say).
    NotFound,
    /// TLS negotiation failed.
    Tls,
    /// The server does not offer what the adapter needs (JetStream disabled, say).
    Unsupported,
    /// The server spoke an unexpected protocol.
    Protocol,
    /// Anything else; see the source.
    Other,
}

impl ConnectErrorKind {
    /// Whether trying again later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ConnectErrorKind::Unreachable
                | ConnectErrorKind::Refused
                | ConnectErrorKind::TimedOut
                | ConnectErrorKind::Other
        )
    }
}

impl fmt::Display for ConnectErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectErrorKind::Unreachable => "host unreachable",
            ConnectErrorKind::Refused => "connection refused",
            ConnectErrorKind::TimedOut => "timed out",
            ConnectErrorKind::Authentication => "authentication failed",
            ConnectErrorKind::Authorization => "not authorized",
            ConnectErrorKind::NotFound => "not found",
            ConnectErrorKind::Tls => "TLS failed",
            ConnectErrorKind::Unsupported => "feature not available on the server",
            ConnectErrorKind::Protocol => "protocol error",
            ConnectErrorKind::Other => "failed",
        })
    }
}

/// What kind of failure a broker reported, so callers can branch without
/// parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerErrorKind {
    /// The broker or the connection to it is not available right now (lost
    /// connection, no leader, not answering). Retryable.
    Unavailable,
    /// No queue, group or consumer can receive the message.
    Unroutable,
    /// The credentials lack a permission for the operation.
    PermissionDenied,
    /// A broker limit was reached (queue length, rate, storage). Retryable:
    /// the limit may free up.
    LimitReached,
    /// A resource the operation needs does not exist.
    NotFound,
    /// A resource exists with other settings than the ones asked for.
    Conflict,
    /// The broker refused the operation or the message for good.
    Rejected,
    /// Anything else; see the source. Retryable, since nothing says it
    /// cannot succeed.
    Other,
}

impl BrokerErrorKind {
    /// Whether trying again may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            BrokerErrorKind::Unavailable | BrokerErrorKind::LimitReached | BrokerErrorKind::Other
        )
    }
}

impl fmt::Display for BrokerErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerErrorKind::Unavailable => "broker unavailable",
            BrokerErrorKind::Unroutable => "unroutable",
            BrokerErrorKind::PermissionDenied => "permission denied",
            BrokerErrorKind::LimitReached => "limit reached",
            BrokerErrorKind::NotFound => "not found",
            BrokerErrorKind::Conflict => "conflicts with an existing resource",
            BrokerErrorKind::Rejected => "rejected",
            BrokerErrorKind::Other => "failed",
        })
    }
}

/// Every failure a courier operation can report.
///
/// `Display` shows the failure and its immediate cause on one line
/// (`nats: ack failed (broker unavailable): timed out`); [`chain`] gives
/// every cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A topic or consumer-group name cannot be carried by every broker.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// A header is invalid, reserved, or the headers are too large.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The payload is larger than the broker accepts.
    #[error("payload of {size} bytes is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Payload size.
        size: usize,
        /// The broker's limit.
        limit: usize,
    },
    /// A value could not be serialized into a payload.
    #[error("cannot encode {type_name}: {source}")]
    Encode {
        /// The Rust type being encoded.
        type_name: &'static str,
        /// The encoder's reason.
        #[source]
        source: BoxError,
    },
    /// A payload could not be decoded into the requested type. Permanent:
    /// the same bytes will never decode.
    #[error("cannot decode message {id} as {type_name}: {source}")]
    Decode {
        /// The message that failed to decode.
        id: MessageId,
        /// The Rust type requested.
        type_name: &'static str,
        /// The decoder's reason.
        #[source]
        source: BoxError,
    },
    /// A connection URL is malformed or has an unsupported scheme.
    #[error("invalid broker URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, password removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL's scheme belongs to an adapter this build does not include.
    #[error("broker URL {url} needs courier's `{feature}` feature, which is not enabled")]
    FeatureDisabled {
        /// The URL, password removed.
        url: String,
        /// The Cargo feature to enable.
        feature: &'static str,
    },
    /// Connecting to the broker failed.
    #[error("cannot connect to {url}: {kind}{}", cause_suffix(source.as_deref()))]
    Connect {
        /// The URL, password removed.
        url: String,
        /// What kind of failure.
        kind: ConnectErrorKind,
        /// The client's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The broker did not confirm an operation in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// How long courier waited.
        after: Duration,
    },
    /// The publisher, subscriber or broker was closed.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// The topic does not exist and the adapter is not allowed to create it.
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    /// The adapter or its broker does not offer this operation.
    #[error("{broker} does not support {feature}")]
    Unsupported {
        /// The adapter.
        broker: &'static str,
        /// What was asked for.
        feature: &'static str,
    },
    /// The broker rejected or failed an operation.
    #[error("{broker}: {operation} failed ({kind}): {source}")]
    Broker {
        /// The adapter (`"amqp"`, `"kafka"`, ...).
        broker: &'static str,
        /// What was being done (`"publish"`, `"ack"`, ...).
        operation: &'static str,
        /// What kind of failure; decides [`Error::is_retryable`].
        kind: BrokerErrorKind,
        /// The client's error.
        #[source]
        source: BoxError,
    },
}

/// `": cause"` for an optional cause, empty without one.
fn cause_suffix(source: Option<&(dyn std::error::Error + Send + Sync + 'static)>) -> String {
    source.map_or_else(String::new, |cause| format!(": {cause}"))
}

impl Error {
    /// Whether the same operation may succeed if tried again: connection
    /// drops, timeouts and broker hiccups are retryable; invalid input,
    /// undecodable payloads and closed handles are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { kind, .. } => kind.is_retryable(),
            Error::Timeout { .. } => true,
            Error::Broker { kind, .. } => kind.is_retryable(),
            _ => false,
        }
    }

    /// The kind of a [`Error::Broker`], `None` for other variants.
    pub fn broker_kind(&self) -> Option<BrokerErrorKind> {
        match self {
            Error::Broker { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// A [`Error::Broker`] from any client error.
    pub fn broker(
        broker: &'static str,
        operation: &'static str,
        kind: BrokerErrorKind,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Broker {
            broker,
            operation,
            kind,
            source: source.into(),
        }
    }
}

/// An error and all its sources on one line, `outer: inner: innermost`: the
/// text to log or to put in a dead-letter reason. A cause whose text the
/// line already ends with (errors that show their cause) is not repeated.
///
/// # Examples
///
/// ```
/// let err = courier_core::Message::new("true").json::<u32>().unwrap_err();
/// let text = courier_core::error::chain(&err);
/// assert!(text.starts_with("cannot decode message"));
/// assert!(text.ends_with("as u32: invalid type: boolean `true`, expected u32 at line 1 column 4"));
/// ```
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `work` within `after`, or [`Error::Timeout`] naming `operation`: the
/// bound adapters put on an operation that waits for the broker, however
/// many round trips it makes.
///
/// # Errors
///
/// [`Error::Timeout`] past `after`; otherwise what `work` returns.
///
/// # Cancel safety
///
/// As cancel safe as `work`: past the bound, `work` is dropped.
pub async fn within<T>(
    operation: &'static str,
    after: Duration,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(after, work)
        .await
        .unwrap_or(Err(Error::Timeout { operation, after }))
}

/// The URL with its password, and the values of query options that hold
/// secrets, replaced by `***`, for error messages and logs.
///
/// Works on lists too (`kafka://a:1,b:2`). A NATS URL's (`nats://`,
/// `tls://`) lone user part is a token and is masked whole. A query option
/// is secret when its name (percent-decoded) contains `password`, `passwd`,
/// `secret`, `token`, `credential`, `nkey` or `key` (as in `sasl_password`,
/// `api_key`, `ssl_key_password`). A password holding an unencoded `/`, `?`
/// or `#` hides the end of the user part; when an `@` follows such a
/// character in a URL that does not parse, or in its path, everything
/// between `://` and the last `@` is masked.
///
/// # Examples
///
/// ```
/// use courier_core::error::redact_url;
/// assert_eq!(redact_url("amqp://app:s3cret@rabbit:5672/%2f"), "amqp://app:***@rabbit:5672/%2f");
/// assert_eq!(redact_url("nats://localhost:4222"), "nats://localhost:4222");
/// assert_eq!(
///     redact_url("kafka://k:9092?sasl_password=hunter2&client_id=a"),
///     "kafka://k:9092?sasl_password=***&client_id=a"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    if let Some(masked) = redact_hidden_userinfo(url) {
        return masked;
    }
    let (base, fragment) = match url.find('#') {
        Some(hash) => url.split_at(hash),
        None => (url, ""),
    };
    let (base, query) = match base.find('?') {
        Some(mark) => (&base[..mark], Some(&base[mark + 1..])),
        None => (base, None),
    };
    let mut out = redact_userinfo(base);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_option(&decoded_name(name)) => {
                    format!("{name}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out.push_str(fragment);
    out
}

/// Whether a URL query option's value is a secret; see [`redact_url`].
pub fn is_secret_option(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "credential",
        "nkey",
        "key",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// A query option's name, percent-decoded.
fn decoded_name(name: &str) -> String {
    ::url::form_urlencoded::parse(name.as_bytes())
        .next()
        .map(|(name, _)| name.into_owned())
        .unwrap_or_default()
}

/// The URL masked from `://` to its last `@` when an `@` stands where the
/// user part would be had the password not held a `/`, `?` or `#`: after
/// the authority, in a URL that does not parse or in its path.
fn redact_hidden_userinfo(url: &str) -> Option<String> {
    let authority_start = url.find("://")? + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if rest[..authority_len].contains('@') {
        return None;
    }
    let at = authority_len + rest[authority_len..].rfind('@')?;
    let path_len = rest.find(['?', '#']).unwrap_or(rest.len());
    let in_path = at < path_len;
    if !in_path && ::url::Url::parse(url).is_ok() {
        return None;
    }
    Some(format!("{}***{}", &url[..authority_start], &rest[at..]))
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let masked = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        // A NATS URL's user part alone is a token: a secret.
        None if url.starts_with("nats:") || url.starts_with("tls:") => "***".to_owned(),
        None => userinfo.to_owned(),
    };
    format!(
        "{}{}{}",
        &url[..authority_start],
        masked,
        &url[authority_start + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(redact_url("amqp://u:p@h/v?x=1"), "amqp://u:***@h/v?x=1");
        assert_eq!(redact_url("amqp://u:p:q@h"), "amqp://u:***@h");
        assert_eq!(redact_url("nats://token@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("amqp://user@h"), "amqp://user@h");
        assert_eq!(redact_url("kafka://a:1,b:2"), "kafka://a:1,b:2");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("amqp://u:p@h/v?auth_token=t&heartbeat=5#frag"),
            "amqp://u:***@h/v?auth_token=***&heartbeat=5#frag"
        );
        assert_eq!(redact_url("nats://h?nkey=SU123"), "nats://h?nkey=***");
        assert_eq!(redact_url("tls://token@h:4222"), "tls://***@h:4222");
        assert_eq!(
            redact_url("kafka://h:1?sasl_pass%77ord=x&a%5Fkey=y"),
            "kafka://h:1?sasl_pass%77ord=***&a%5Fkey=***"
        );
    }

    #[test]
    fn redaction_finds_a_password_that_hides_the_user_part() {
        // An unencoded '/', '?' or '#' in the password ends the authority early.
        assert_eq!(redact_url("amqp://u:p/ss@h/v"), "amqp://***@h/v");
        assert_eq!(redact_url("amqp://u:p?ss@h"), "amqp://***@h");
        assert_eq!(redact_url("amqp://u:p#ss@h"), "amqp://***@h");
        assert_eq!(redact_url("amqp://u:12/ss@h"), "amqp://***@h");
        assert_eq!(redact_url("nats://to/ken@h:4222"), "nats://***@h:4222");
        // An '@' in an option of a URL that parses is no user part.
        assert_eq!(
            redact_url("amqp://h/?client_name=me@x"),
            "amqp://h/?client_name=me@x"
        );
    }

    #[test]
    fn retryability_follows_the_kind() {
        let refused = Error::Connect {
            url: "amqp://h".into(),
            kind: ConnectErrorKind::Refused,
            source: None,
        };
        let auth = Error::Connect {
            url: "amqp://h".into(),
            kind: ConnectErrorKind::Authentication,
            source: None,
        };
        assert!(refused.is_retryable());
        assert!(!auth.is_retryable());
        assert!(!Error::Closed("publisher").is_retryable());
        assert_eq!(
            refused.to_string(),
            "cannot connect to amqp://h: connection refused"
        );
        let lost = Error::broker(
            "nats",
            "ack",
            BrokerErrorKind::Unavailable,
            std::io::Error::other("timed out"),
        );
        assert!(lost.is_retryable());
        assert_eq!(
            lost.to_string(),
            "nats: ack failed (broker unavailable): timed out"
        );
        assert_eq!(
            chain(&lost),
            "nats: ack failed (broker unavailable): timed out"
        );
        let denied = Error::broker("amqp", "publish", BrokerErrorKind::PermissionDenied, "403");
        assert!(!denied.is_retryable());
        assert_eq!(
            denied.broker_kind(),
            Some(BrokerErrorKind::PermissionDenied)
        );
    }
}
