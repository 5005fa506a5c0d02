//! How a handler reports failure, and the errors the runtime's own
//! middleware produce.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use crate::error::BoxError;

/// The result of handling one message: `Ok` acks it, `Err` retries it or
/// dead-letters it, as the [`HandlerError`]'s [`FailureKind`] says.
pub type HandlerResult = Result<(), HandlerError>;

/// Whether a failure may go away if the message is handled again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// Trying again may succeed (a database or service was unavailable, a
    /// timeout, a panic): the runtime retries with backoff and dead-letters
    /// the message only after the last attempt.
    Transient,
    /// The message itself is the problem (it does not decode, it breaks a
    /// business rule): the runtime dead-letters it at once.
    Permanent,
    /// Not a failure of this message: something else holds it for now (an
    /// idempotency store reports another worker on it). The runtime tries
    /// again after the [`retry_after`](HandlerError::retry_after) delay
    /// without using up an attempt of the retry policy.
    Deferred,
}

/// Why a handler failed, and whether trying again may help.
///
/// Any error converts into a `HandlerError` with `?`; it is
/// [`FailureKind::Transient`] unless trying again cannot help: a courier
/// [`Error`](crate::Error) whose [`is_retryable`](crate::Error::is_retryable)
/// is `false` (an undecodable payload, an invalid name, a closed publisher,
/// a permission the broker denies) or a `serde_json` syntax or data error,
/// which the same bytes will always repeat. Say [`HandlerError::permanent`]
/// to dead-letter at once, [`HandlerError::transient`] to retry whatever the
/// error.
///
/// `HandlerError` deliberately does not implement [`std::error::Error`]
/// (as `anyhow::Error` does not), which is what lets `?` convert every error
/// into it; [`HandlerError::source`] gives the cause.
///
/// # Examples
///
/// ```
/// use courier_core::runtime::{FailureKind, HandlerError};
///
/// fn parse(text: &str) -> Result<u64, HandlerError> {
///     if text.is_empty() {
///         return Err(HandlerError::permanent("empty order number"));
///     }
///     Ok(text.parse::<u64>()?) // a ParseIntError: transient by default
/// }
/// assert_eq!(parse("").unwrap_err().kind(), FailureKind::Permanent);
/// assert_eq!(parse("x").unwrap_err().kind(), FailureKind::Transient);
/// ```
pub struct HandlerError {
    kind: FailureKind,
    source: BoxError,
    retry_after: Option<Duration>,
}

impl HandlerError {
    /// A failure that may go away: the message is retried.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        HandlerError {
            kind: FailureKind::Transient,
            source: source.into(),
            retry_after: None,
        }
    }

    /// A failure that will repeat: the message is dead-lettered at once.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        HandlerError {
            kind: FailureKind::Permanent,
            source: source.into(),
            retry_after: None,
        }
    }

    /// Handling must wait: try again after `delay`, without counting the
    /// attempt against the retry policy (see [`FailureKind::Deferred`]). A
    /// deferral that never ends holds the message (and its key's lane) until
    /// the shutdown requeues it, so defer only on what ends by itself, such
    /// as another worker's lease.
    pub fn deferred(source: impl Into<BoxError>, delay: Duration) -> Self {
        HandlerError {
            kind: FailureKind::Deferred,
            source: source.into(),
            retry_after: Some(delay),
        }
    }

    /// Asks the runtime to wait at least `delay` before the next attempt
    /// (the longer of this and the retry policy's backoff is used). An open
    /// circuit breaker sets it to the time left until it lets a probe through.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Whether the message is dead-lettered without further attempts.
    pub fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }

    /// The least delay asked for before the next attempt, if any.
    pub fn retry_after_hint(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The cause.
    pub fn source(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.source
    }

    /// The cause, owned.
    pub fn into_source(self) -> BoxError {
        self.source
    }

    /// The cause's message followed by its own causes, `: `-separated, as
    /// written into the dead-letter reason header.
    pub fn reason(&self) -> String {
        crate::error::chain(&*self.source)
    }

    fn classify(source: BoxError) -> Self {
        let permanent = match source.downcast_ref::<crate::Error>() {
            Some(error) => !error.is_retryable(),
            None => source
                .downcast_ref::<serde_json::Error>()
                .is_some_and(|e| !e.is_io()),
        };
        if permanent {
            HandlerError::permanent(source)
        } else {
            HandlerError::transient(source)
        }
    }
}

impl<E> From<E> for HandlerError
where
    E: StdError + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        HandlerError::classify(Box::new(error))
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason())
    }
}

/// A handler attempt took longer than its [`TimeoutLayer`](super::TimeoutLayer)
/// allows. Transient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("handler timed out after {after:?}")]
pub struct TimedOut {
    /// The limit.
    pub after: Duration,
}

/// A [`CircuitBreaker`](super::CircuitBreaker) is open and refused the
/// attempt without calling the handler. Transient, with a retry-after hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is open; next probe in {retry_in:?}")]
pub struct CircuitOpen {
    /// Time left until the breaker lets a probe through.
    pub retry_in: Duration,
}

/// A handler panicked; the runtime caught it. Transient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("handler panicked: {message}")]
pub struct Panicked {
    /// The panic message, when it was a string.
    pub message: String,
}

impl Panicked {
    pub(crate) fn from_payload(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Panicked { message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[test]
    fn question_mark_is_transient_except_for_decoding() {
        fn io() -> HandlerResult {
            Err(std::io::Error::other("db down"))?
        }
        fn decode() -> HandlerResult {
            Message::new("not json").json::<u32>()?;
            Ok(())
        }
        fn serde() -> HandlerResult {
            serde_json::from_str::<u32>("{")?;
            Ok(())
        }
        assert_eq!(io().unwrap_err().kind(), FailureKind::Transient);
        assert_eq!(decode().unwrap_err().kind(), FailureKind::Permanent);
        assert_eq!(serde().unwrap_err().kind(), FailureKind::Permanent);
        let closed: HandlerError = crate::Error::Closed("publisher").into();
        assert_eq!(closed.kind(), FailureKind::Permanent);
        let timeout: HandlerError = crate::Error::Timeout {
            operation: "publish",
            after: Duration::from_secs(1),
        }
        .into();
        assert_eq!(timeout.kind(), FailureKind::Transient);
    }

    #[test]
    fn reason_walks_the_cause_chain() {
        let err: HandlerError = Message::new("?").json::<u32>().unwrap_err().into();
        let reason = err.reason();
        assert!(reason.starts_with("cannot decode message "), "{reason}");
        assert!(reason.contains(" as u32: expected value"), "{reason}");
        assert_eq!(HandlerError::transient("plain").reason(), "plain");
    }
}
