//! What can go wrong with a request.

use std::fmt;
use std::time::Duration;

/// Why a request got no usable reply.
///
/// Branch on the variant: [`RequestError::Timeout`] and
/// [`RequestError::NoResponders`] say nothing about the request itself and
/// may pass if tried again ([`RequestError::is_retryable`]);
/// [`RequestError::Remote`] is the responder's own verdict.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No reply within the request's timeout. A reply arriving later is
    /// dropped and counted ([`Requester::late_replies`](super::Requester::late_replies)).
    #[error("no reply within {elapsed:?}")]
    Timeout {
        /// How long the requester waited.
        elapsed: Duration,
    },
    /// The broker said at once that nobody can receive the request (nothing
    /// subscribed to the topic). Brokers that cannot tell let the request
    /// time out instead.
    #[error("no responders for topic {topic:?}")]
    NoResponders {
        /// The request's topic.
        topic: String,
    },
    /// The responder's handler failed; its reason came back in the reply.
    #[error("the responder failed ({kind}): {message}")]
    Remote {
        /// What kind of failure it was.
        kind: RemoteErrorKind,
        /// The handler error's reason, its causes included.
        message: String,
    },
    /// The reply's payload did not decode into the expected type, or the
    /// request's body did not encode ([`request_json`](super::request_json)).
    #[error("request or reply body: {0}")]
    Codec(#[source] crate::Error),
    /// Sending the request or receiving the reply failed in the broker
    /// client, or the connection does not offer request/reply
    /// ([`Error::Unsupported`](crate::Error::Unsupported)).
    #[error("request transport: {0}")]
    Transport(#[source] crate::Error),
}

impl RequestError {
    /// Whether sending the same request again may succeed: timeouts, no
    /// responders (one may start), a transient remote failure and
    /// retryable transport failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            RequestError::Timeout { .. } | RequestError::NoResponders { .. } => true,
            RequestError::Remote { kind, .. } => *kind == RemoteErrorKind::Transient,
            RequestError::Transport(e) => e.is_retryable(),
            RequestError::Codec(_) => false,
        }
    }
}

impl From<crate::Error> for RequestError {
    fn from(error: crate::Error) -> Self {
        RequestError::Transport(error)
    }
}

/// What kind of failure a responder reported: the
/// [`FailureKind`](crate::runtime::FailureKind) of its handler's error, or a
/// request it could not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteErrorKind {
    /// The handler failed with a transient error: trying again may succeed.
    Transient,
    /// The handler rejected the request: the same request fails again.
    Permanent,
    /// The request's body did not decode into the responder's type.
    BadRequest,
    /// A kind this version of courier does not know.
    Other,
}

impl RemoteErrorKind {
    /// The name it travels under, in the
    /// [`ERROR_KIND`](super::headers::ERROR_KIND) header.
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteErrorKind::Transient => "transient",
            RemoteErrorKind::Permanent => "permanent",
            RemoteErrorKind::BadRequest => "bad-request",
            RemoteErrorKind::Other => "other",
        }
    }

    /// The kind named `name`; unknown names are [`RemoteErrorKind::Other`].
    pub fn parse(name: &str) -> Self {
        match name {
            "transient" => RemoteErrorKind::Transient,
            "permanent" => RemoteErrorKind::Permanent,
            "bad-request" => RemoteErrorKind::BadRequest,
            _ => RemoteErrorKind::Other,
        }
    }
}

impl fmt::Display for RemoteErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
