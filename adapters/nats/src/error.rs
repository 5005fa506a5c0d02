//! How NATS client errors become courier errors.

use async_nats::ConnectErrorKind as NatsKind;
use courier_core::{BrokerErrorKind, ConnectErrorKind, Error};

/// The adapter's name in errors.
pub(crate) const BROKER: &str = "nats";

/// Failures the NATS adapter finds itself. They reach callers as the
/// source of a courier [`Error`] (`Error::Broker { broker: "nats", .. }`),
/// so `downcast_ref::<NatsError>()` on the source tells them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// A stream with the topic's name exists but does not capture the
    /// topic's subject: courier will not share it with something else.
    #[error("stream {stream} exists with subjects {subjects:?}, not topic {topic:?}")]
    StreamConflict {
        /// The stream's name.
        stream: String,
        /// The subjects it captures.
        subjects: Vec<String>,
        /// The topic courier wanted it for.
        topic: String,
    },
    /// A durable consumer with the group's name exists but was created for
    /// another group (group names `a.b` and `a_b` map to the same consumer
    /// name): courier will not let two groups share it.
    #[error("consumer {consumer} of stream {stream} belongs to {found:?}, not group {group:?}")]
    ConsumerConflict {
        /// The stream.
        stream: String,
        /// The consumer's name.
        consumer: String,
        /// What the existing consumer's description says it is for.
        found: String,
        /// The group courier wanted it for.
        group: String,
    },
}

/// What the adapter concluded, with the error that led to it (if any) as
/// its source: the source's kind (a timeout, say) stays visible.
#[derive(Debug, thiserror::Error)]
#[error("{why}")]
pub(crate) struct Explained {
    pub(crate) why: &'static str,
    #[source]
    pub(crate) source: Option<courier_core::BoxError>,
}

/// A connection failure, typed, naming the URL without its password.
pub(crate) fn connect_error(url: &str, err: async_nats::ConnectError) -> Error {
    let kind = match err.kind() {
        NatsKind::Dns => ConnectErrorKind::Unreachable,
        NatsKind::Authentication => ConnectErrorKind::Authentication,
        NatsKind::AuthorizationViolation => ConnectErrorKind::Authentication,
        NatsKind::TimedOut => ConnectErrorKind::TimedOut,
        NatsKind::Tls => ConnectErrorKind::Tls,
        NatsKind::ServerParse => ConnectErrorKind::Protocol,
        NatsKind::Io => io_kind(&err),
        _ => ConnectErrorKind::Other,
    };
    Error::Connect {
        url: courier_core::error::redact_url(url),
        kind,
        source: Some(Box::new(err)),
    }
}

fn io_kind(err: &(dyn std::error::Error + 'static)) -> ConnectErrorKind {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => ConnectErrorKind::Refused,
                std::io::ErrorKind::TimedOut => ConnectErrorKind::TimedOut,
                _ => ConnectErrorKind::Unreachable,
            };
        }
        source = e.source();
    }
    if err.to_string().contains("refused") {
        ConnectErrorKind::Refused
    } else {
        ConnectErrorKind::Unreachable
    }
}

/// A server-side failure of an operation; retryable unless `permanent`.
pub(crate) fn op_error(
    operation: &'static str,
    err: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::broker(BROKER, operation, BrokerErrorKind::Unavailable, err)
}

/// Whether `error` is a request the client gave up waiting for: anywhere
/// in its chain, a timer that ran out or an async-nats error of kind
/// `TimedOut` (core requests, and the JetStream API requests behind
/// declaring streams and consumers, reading their state and publishing).
/// [`Inner::bounded`](crate::connection::Inner::bounded) turns such an
/// error into [`Error::Timeout`], whichever of the two timers ran out first.
pub(crate) fn is_timeout(error: &Error) -> bool {
    use async_nats::jetstream::{context, stream};

    /// Whether `e` is an async-nats error of one of these types, of the
    /// given kind.
    macro_rules! of_kind {
        ($e:expr, $($error:ty => $kind:expr),+ $(,)?) => {
            false $(|| $e.downcast_ref::<$error>().is_some_and(|error| error.kind() == $kind))+
        };
    }

    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<tokio::time::error::Elapsed>()
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || of_kind!(e,
                async_nats::RequestError => async_nats::RequestErrorKind::TimedOut,
                context::RequestError => context::RequestErrorKind::TimedOut,
                context::CreateStreamError => context::CreateStreamErrorKind::TimedOut,
                context::ConsumerInfoError => context::ConsumerInfoErrorKind::TimedOut,
                context::PublishError => context::PublishErrorKind::TimedOut,
                stream::ConsumerError => stream::ConsumerErrorKind::TimedOut,
            )
        {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::{context, stream};

    use super::*;

    /// A JetStream API request that timed out is a timeout whichever call
    /// it came from, also when it is the source of another error (getting
    /// a stream wraps the request's error); any other kind is not.
    #[test]
    fn jetstream_timeouts_are_timeouts_wherever_they_sit_in_the_chain() {
        let timed_out: Vec<Error> = vec![
            op_error(
                "create stream",
                context::CreateStreamError::new(context::CreateStreamErrorKind::TimedOut),
            ),
            op_error(
                "get stream",
                context::GetStreamError::with_source(
                    context::GetStreamErrorKind::Request,
                    context::RequestError::new(context::RequestErrorKind::TimedOut),
                ),
            ),
            op_error(
                "create consumer",
                stream::ConsumerError::new(stream::ConsumerErrorKind::TimedOut),
            ),
            op_error(
                "lag: consumer info",
                context::ConsumerInfoError::new(context::ConsumerInfoErrorKind::TimedOut),
            ),
            op_error(
                "publish",
                context::PublishError::new(context::PublishErrorKind::TimedOut),
            ),
        ];
        for error in &timed_out {
            assert!(is_timeout(error), "a timeout: {error:?}");
        }
        let other = op_error(
            "create stream",
            context::CreateStreamError::new(context::CreateStreamErrorKind::JetStreamUnavailable),
        );
        assert!(!is_timeout(&other), "not a timeout: {other:?}");
    }
}
