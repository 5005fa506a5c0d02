//! How the AMQP client's failures become courier's [`Error`].
//!
//! Connection failures become [`Error::Connect`] with a
//! [`ConnectErrorKind`] and the URL without its password; everything else
//! becomes [`Error::Broker`] with the client's error (or an [`AmqpError`]) as
//! its source.

use std::io;
use std::time::Duration;

use courier_core::{BrokerErrorKind, ConnectErrorKind, Error};
use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// The adapter's name in errors.
pub(crate) const BROKER: &str = "amqp";

/// Failures the adapter itself detects; found as the `source` of an
/// [`Error::Broker`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// The delivery arrived on a channel that has since closed (the
    /// connection was lost, or the subscriber closed). Its settlement cannot
    /// reach the broker, which delivers the message again.
    #[error(
        "the channel this delivery came on is closed (connection lost or subscriber closed); \
         the broker delivers the message again"
    )]
    StaleDelivery,
    /// A message published with the `mandatory` flag reached no queue.
    #[error("no queue is bound to exchange {exchange:?} ({reply})")]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The broker's reply text.
        reply: String,
    },
    /// The broker refused a message with `basic.nack` (an internal error on
    /// its side).
    #[error("the broker refused the message (basic.nack)")]
    Nacked,
    /// A header name longer than the 255 bytes an AMQP field name can hold.
    #[error("header name of {0} bytes is longer than the 255 bytes AMQP allows")]
    HeaderNameTooLong(usize),
    /// A requeue delay longer than RabbitMQ can hold a message for.
    #[error("requeue delay {delay:?} is longer than the {limit:?} RabbitMQ can hold a message for")]
    DelayTooLong {
        /// The delay asked for.
        delay: Duration,
        /// The longest possible.
        limit: Duration,
    },
    /// The connection could not be re-established in time.
    #[error("gave up reconnecting to {url} after {waited:?}")]
    GaveUp {
        /// The URL, password removed.
        url: String,
        /// How long the adapter tried.
        waited: Duration,
        /// The last connection error.
        #[source]
        last: Box<Error>,
    },
    /// A quorum queue that exists but whose leader does not answer: the
    /// broker answers for the queue's metadata, but a consume on it got no
    /// answer. RabbitMQ leaves a quorum queue in this state after a hard
    /// kill within about a second of its declaration (see the crate docs,
    /// "What survives a crash"); a queue still electing its leader after a
    /// restart looks the same for a moment.
    #[error(
        "quorum queue {queue:?} has no leader: the broker answers for it but did not start a          consumer within {waited:?}"
    )]
    NoLeader {
        /// The queue.
        queue: String,
        /// How long the consume was given.
        waited: Duration,
    },
}

/// A [`Error::Broker`] of this adapter.
pub(crate) fn broker(
    operation: &'static str,
    kind: BrokerErrorKind,
    source: impl Into<courier_core::BoxError>,
) -> Error {
    Error::broker(BROKER, operation, kind, source)
}

/// A client error during `operation`, classified.
pub(crate) fn from_lapin(operation: &'static str, error: lapin::Error) -> Error {
    broker(operation, broker_kind(&error), error)
}

/// What kind of failure a client error is: a lost connection, or the
/// broker's refusal by its AMQP reply code.
pub(crate) fn broker_kind(error: &lapin::Error) -> BrokerErrorKind {
    if is_connection_error(error) {
        return BrokerErrorKind::Unavailable;
    }
    match error.kind() {
        ErrorKind::ProtocolError(e) => match e.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => BrokerErrorKind::PermissionDenied,
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => BrokerErrorKind::NotFound,
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            | AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => BrokerErrorKind::Conflict,
            AMQPErrorKind::Soft(AMQPSoftError::NOROUTE) => BrokerErrorKind::Unroutable,
            AMQPErrorKind::Hard(AMQPHardError::RESOURCEERROR) => BrokerErrorKind::LimitReached,
            AMQPErrorKind::Soft(_) => BrokerErrorKind::Rejected,
            AMQPErrorKind::Hard(_) => BrokerErrorKind::Unavailable,
        },
        _ => BrokerErrorKind::Other,
    }
}

/// Whether the error means the connection is gone (as opposed to one
/// channel being closed by the broker for a bad request).
pub(crate) fn is_connection_error(error: &lapin::Error) -> bool {
    match error.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::RuntimeShutdownError(_)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::MissingHeartbeatError => true,
        ErrorKind::ProtocolError(e) => matches!(e.kind(), AMQPErrorKind::Hard(_)),
        _ => false,
    }
}

/// Why connecting failed, from the client's error.
pub(crate) fn connect_kind(error: &lapin::Error) -> ConnectErrorKind {
    match error.kind() {
        ErrorKind::IOError(e) | ErrorKind::RuntimeShutdownError(e) => io_kind(e),
        ErrorKind::ProtocolError(e) => match e.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            | AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED)
                if e.get_message().as_str().contains("Login was refused") =>
            {
                ConnectErrorKind::Authentication
            }
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => ConnectErrorKind::Authentication,
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
                if e.get_message().as_str().contains("not found") =>
            {
                ConnectErrorKind::NotFound
            }
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => ConnectErrorKind::Authorization,
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => ConnectErrorKind::Refused,
            _ => ConnectErrorKind::Protocol,
        },
        ErrorKind::AuthProviderError(_) => ConnectErrorKind::Authentication,
        ErrorKind::ParsingError(_)
        | ErrorKind::InvalidProtocolVersion(_)
        | ErrorKind::SerialisationError(_) => ConnectErrorKind::Protocol,
        ErrorKind::MissingHeartbeatError => ConnectErrorKind::TimedOut,
        _ => ConnectErrorKind::Other,
    }
}

fn io_kind(error: &io::Error) -> ConnectErrorKind {
    let text = error.to_string().to_ascii_lowercase();
    match error.kind() {
        io::ErrorKind::ConnectionRefused => ConnectErrorKind::Refused,
        io::ErrorKind::TimedOut => ConnectErrorKind::TimedOut,
        io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable
        | io::ErrorKind::NotFound => ConnectErrorKind::Unreachable,
        _ if text.contains("lookup")
            || text.contains("resolve")
            || text.contains("name or service") =>
        {
            ConnectErrorKind::Unreachable
        }
        _ if text.contains("certificate") || text.contains("tls") || text.contains("handshake") => {
            ConnectErrorKind::Tls
        }
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::InvalidData => ConnectErrorKind::Protocol,
        _ => ConnectErrorKind::Other,
    }
}

/// [`Error::Connect`] for `redacted_url`.
pub(crate) fn connect_error(redacted_url: &str, error: lapin::Error) -> Error {
    let mut kind = connect_kind(&error);
    // Over `amqps`, undecodable bytes while connecting come from the TLS
    // layer: a certificate it refused, or no TLS on the other end.
    if redacted_url.starts_with("amqps:")
        && matches!(error.kind(), ErrorKind::IOError(e) if e.kind() == io::ErrorKind::InvalidData)
    {
        kind = ConnectErrorKind::Tls;
    }
    Error::Connect {
        url: redacted_url.to_owned(),
        kind,
        source: Some(Box::new(error)),
    }
}

/// [`Error::Connect`] after the connect timeout.
pub(crate) fn connect_timeout(redacted_url: &str, after: Duration) -> Error {
    Error::Connect {
        url: redacted_url.to_owned(),
        kind: ConnectErrorKind::TimedOut,
        source: Some(format!("no connection within {after:?}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    fn protocol(kind: AMQPErrorKind, text: &str) -> lapin::Error {
        ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into()
    }

    #[test]
    fn server_refusals_have_their_kind() {
        let auth = protocol(
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN.",
        );
        assert_eq!(connect_kind(&auth), ConnectErrorKind::Authentication);
        let vhost = protocol(
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
            "NOT_ALLOWED - vhost nope not found",
        );
        assert_eq!(connect_kind(&vhost), ConnectErrorKind::NotFound);
        let denied = protocol(
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
            "NOT_ALLOWED - access to vhost '/' refused for user 'u'",
        );
        assert_eq!(connect_kind(&denied), ConnectErrorKind::Authorization);
    }

    #[test]
    fn socket_failures_have_their_kind() {
        let refused: lapin::Error = io::Error::from(io::ErrorKind::ConnectionRefused).into();
        assert_eq!(connect_kind(&refused), ConnectErrorKind::Refused);
        let dns: lapin::Error =
            io::Error::other("failed to lookup address information: Name or service not known")
                .into();
        assert_eq!(connect_kind(&dns), ConnectErrorKind::Unreachable);
        assert!(is_connection_error(&dns));
    }

    #[test]
    fn soft_refusals_are_not_retryable() {
        let missing = protocol(
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
            "NOT_FOUND - no exchange 'x'",
        );
        assert!(!from_lapin("publish", missing).is_retryable());
        let io: lapin::Error = io::Error::from(io::ErrorKind::BrokenPipe).into();
        assert!(from_lapin("publish", io).is_retryable());
    }
}
