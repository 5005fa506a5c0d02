//! What a publish does when no consumer group can receive the message.
//!
//! A broker that keeps a topic's messages for groups created later (Kafka,
//! NATS JetStream, the in-process broker with retention) has no
//! unroutable message: a group starting at
//! [`StartPosition::Earliest`](crate::StartPosition::Earliest) receives
//! it. A broker that routes a message only to the queues bound at publish
//! time (RabbitMQ, the in-process broker with retention 0) loses a message
//! published to a topic no group is bound to; courier reports that publish
//! as an [`Error::Broker`] of kind [`BrokerErrorKind::Unroutable`] naming
//! the topic ([`UnroutablePolicy::Error`], the default), or, for users who
//! want fire-and-forget, lets it return `Ok` ([`UnroutablePolicy::Drop`]).
//!
//! The policy is the shared URL option [`URL_OPTION`] (`unroutable=error`
//! or `unroutable=drop`), read by every adapter
//! ([`SharedOptions`](crate::adapter::url::SharedOptions)); an adapter on
//! which nothing is unroutable checks it and has no use for it. Each
//! adapter's documentation says what it does.

use crate::error::{BoxError, BrokerErrorKind, Error};

/// The shared URL option that sets the [`UnroutablePolicy`]:
/// `unroutable=error` (the default) or `unroutable=drop`.
pub const URL_OPTION: &str = "unroutable";

/// What a publish does when no consumer group can receive the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnroutablePolicy {
    /// The publish fails with an [`Error::Broker`] of kind
    /// [`BrokerErrorKind::Unroutable`] naming the topic (URL option
    /// `unroutable=error`).
    #[default]
    Error,
    /// The publish returns `Ok` and the broker drops the message
    /// (`unroutable=drop`): fire-and-forget.
    Drop,
}

impl UnroutablePolicy {
    /// The policies by their URL option values.
    pub const CHOICES: &'static [(&'static str, UnroutablePolicy)] = &[
        ("error", UnroutablePolicy::Error),
        ("drop", UnroutablePolicy::Drop),
    ];

    /// The policy's URL option value: `error` or `drop`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnroutablePolicy::Error => "error",
            UnroutablePolicy::Drop => "drop",
        }
    }
}

/// Why a publish is [`BrokerErrorKind::Unroutable`]: no consumer group of
/// the topic can receive the message. Found as the `source` of the
/// [`Error::Broker`]; the broker's own reason, when it gave one, is this
/// error's source.
#[derive(Debug, thiserror::Error)]
#[error("no consumer group receives topic {topic:?}; the message was not stored")]
pub struct UnroutableTopic {
    /// The topic published to.
    pub topic: String,
    /// The broker's reason.
    #[source]
    pub cause: Option<BoxError>,
}

/// The [`Error::Broker`] of kind [`BrokerErrorKind::Unroutable`] for a
/// publish by `broker` to `topic`, with the broker's reason if any.
///
/// # Examples
///
/// ```
/// use courier_core::BrokerErrorKind;
/// let err = courier_core::unroutable::error("amqp", "orders", None);
/// assert_eq!(err.broker_kind(), Some(BrokerErrorKind::Unroutable));
/// assert!(!err.is_retryable());
/// assert_eq!(
///     err.to_string(),
///     "amqp: publish failed (unroutable): no consumer group receives topic \"orders\"; \
///      the message was not stored"
/// );
/// ```
pub fn error(broker: &'static str, topic: &str, cause: Option<BoxError>) -> Error {
    Error::broker(
        broker,
        "publish",
        BrokerErrorKind::Unroutable,
        UnroutableTopic {
            topic: topic.to_owned(),
            cause,
        },
    )
}

/// The topic an [`BrokerErrorKind::Unroutable`] error names, `None` for any
/// other error.
pub fn topic(error: &Error) -> Option<&str> {
    match error {
        Error::Broker {
            kind: BrokerErrorKind::Unroutable,
            source,
            ..
        } => source
            .downcast_ref::<UnroutableTopic>()
            .map(|unroutable| unroutable.topic.as_str()),
        _ => None,
    }
}
