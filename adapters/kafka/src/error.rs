//! How rdkafka errors become courier errors.

use std::time::Duration;

use courier_core::error::redact_url;
use courier_core::{BrokerErrorKind, ConnectErrorKind, Error};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// The adapter's name in errors.
pub(crate) const BROKER: &str = "kafka";

/// A failed connection attempt, typed from the last transport error the
/// client reported (or `TimedOut` when there was none).
pub(crate) fn connect_error(
    url: &str,
    transport: Option<(RDKafkaErrorCode, String)>,
    err: Option<KafkaError>,
) -> Error {
    let kind = match &transport {
        Some((code, reason)) => connect_kind(*code, reason),
        None => ConnectErrorKind::TimedOut,
    };
    let source: Option<courier_core::BoxError> = match (transport, err) {
        (Some((code, reason)), _) => Some(format!("{code}: {reason}").into()),
        (None, Some(err)) => Some(Box::new(err)),
        (None, None) => None,
    };
    Error::Connect {
        url: redact_url(url),
        kind,
        source,
    }
}

/// The kind of a connection failure from rdkafka's error code and reason
/// text (rdkafka reports refused and timed-out connections with the same
/// code, `BrokerTransportFailure`, and says which in the text).
pub(crate) fn connect_kind(code: RDKafkaErrorCode, reason: &str) -> ConnectErrorKind {
    let reason = reason.to_ascii_lowercase();
    match code {
        RDKafkaErrorCode::Resolve => return ConnectErrorKind::Unreachable,
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
            return ConnectErrorKind::Authentication;
        }
        RDKafkaErrorCode::SSL => return ConnectErrorKind::Tls,
        _ => {}
    }
    if reason.contains("connection refused") {
        ConnectErrorKind::Refused
    } else if reason.contains("failed to resolve")
        || reason.contains("unreachable")
        || reason.contains("no route to host")
    {
        ConnectErrorKind::Unreachable
    } else if reason.contains("timed out") {
        ConnectErrorKind::TimedOut
    } else if reason.contains("authentication") || reason.contains("sasl") {
        ConnectErrorKind::Authentication
    } else if reason.contains("ssl") || reason.contains("tls") {
        ConnectErrorKind::Tls
    } else if reason.contains("apiversion")
        || reason.contains("invalid response")
        || reason.contains("protocol")
        || reason.contains("in state apiversion_query")
    {
        ConnectErrorKind::Protocol
    } else {
        ConnectErrorKind::Other
    }
}

/// A failed publish of a record of `size` payload bytes.
pub(crate) fn publish_error(
    err: KafkaError,
    topic: &str,
    size: usize,
    limit: usize,
    timeout: Duration,
) -> Error {
    match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => Error::PayloadTooLarge {
            size,
            limit: limit.min(size.saturating_sub(1)),
        },
        Some(RDKafkaErrorCode::MessageTimedOut) => Error::Timeout {
            operation: "publish",
            after: timeout,
        },
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition,
        ) => Error::TopicNotFound(topic.to_owned()),
        Some(code) => Error::broker(BROKER, "publish", kind(code), err),
        None => Error::broker(BROKER, "publish", BrokerErrorKind::Rejected, err),
    }
}

/// A failed request other than a publish.
pub(crate) fn op_error(operation: &'static str, err: KafkaError) -> Error {
    let kind = err
        .rdkafka_error_code()
        .map_or(BrokerErrorKind::Other, kind);
    Error::broker(BROKER, operation, kind, err)
}

/// What kind of failure an rdkafka error code is.
pub(crate) fn kind(code: RDKafkaErrorCode) -> BrokerErrorKind {
    match code {
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::GroupAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed
        | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
        | RDKafkaErrorCode::Authentication
        | RDKafkaErrorCode::SaslAuthenticationFailed => BrokerErrorKind::PermissionDenied,
        RDKafkaErrorCode::PolicyViolation | RDKafkaErrorCode::ThrottlingQuotaExceeded => {
            BrokerErrorKind::LimitReached
        }
        code if is_retryable(code) => BrokerErrorKind::Unavailable,
        _ => BrokerErrorKind::Rejected,
    }
}

/// Whether an rdkafka error code may go away when the request is repeated.
fn is_retryable(code: RDKafkaErrorCode) -> bool {
    !matches!(
        code,
        RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::InvalidArgument
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::UnsupportedForMessageFormat
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::BadMessage
    )
}

/// The error of an ack or nack whose partition this consumer no longer
/// owns: the message comes back to the partition's next owner.
#[derive(Debug, thiserror::Error)]
#[error(
    "partition {partition} of {topic:?} was revoked or the subscription ended before this \
     delivery was settled; the message will be delivered again"
)]
pub struct PartitionRevoked {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_kinds_follow_rdkafka_reasons() {
        let transport = RDKafkaErrorCode::BrokerTransportFailure;
        assert_eq!(
            connect_kind(
                transport,
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)"
            ),
            ConnectErrorKind::Refused
        );
        assert_eq!(
            connect_kind(
                RDKafkaErrorCode::Resolve,
                "nohost.invalid:9092/bootstrap: Failed to resolve 'nohost.invalid:9092': Name or service not known"
            ),
            ConnectErrorKind::Unreachable
        );
        assert_eq!(
            connect_kind(
                transport,
                "Connect to ipv4#10.0.0.1:9092 failed: Connection timed out"
            ),
            ConnectErrorKind::TimedOut
        );
        assert_eq!(
            connect_kind(
                transport,
                "127.0.0.1:4222/bootstrap: Disconnected (after 3ms in state APIVERSION_QUERY)"
            ),
            ConnectErrorKind::Protocol
        );
    }

    #[test]
    fn publish_errors_are_typed() {
        let timeout = Duration::from_secs(3);
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(
            publish_error(too_large, "t", 10, 5, timeout),
            Error::PayloadTooLarge { size: 10, limit: 5 }
        ));
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let err = publish_error(timed_out, "t", 1, 5, timeout);
        assert!(matches!(err, Error::Timeout { .. }) && err.is_retryable());
        let unknown = KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert!(matches!(
            publish_error(unknown, "t", 1, 5, timeout),
            Error::TopicNotFound(t) if t == "t"
        ));
        let fatal = KafkaError::MessageProduction(RDKafkaErrorCode::Fatal);
        assert!(!publish_error(fatal, "t", 1, 5, timeout).is_retryable());
    }
}
