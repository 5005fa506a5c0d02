//! A time limit per attempt.

use std::time::Duration;

use futures::future::BoxFuture;

use super::Layer;
use crate::runtime::error::{HandlerError, HandlerResult, TimedOut};
use crate::runtime::handler::Handler;
use crate::runtime::request::Request;

/// Fails an attempt that takes longer than a limit with a transient
/// [`TimedOut`]; the inner future is dropped.
#[derive(Debug, Clone)]
pub struct Timeout<H> {
    inner: H,
    limit: Duration,
}

impl<H: Handler> Handler for Timeout<H> {
    fn call<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            match tokio::time::timeout(self.limit, self.inner.call(request)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(HandlerError::transient(TimedOut { after: self.limit })),
            }
        })
    }
}

/// Layer of [`Timeout`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_core::runtime::{self, Layer, TimeoutLayer};
///
/// let handler = TimeoutLayer::new(Duration::from_secs(5))
///     .layer(runtime::raw(|_message| async { Ok(()) }));
/// # let _ = handler;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// Attempts may take at most `limit`.
    pub fn new(limit: Duration) -> Self {
        TimeoutLayer { limit }
    }
}

impl<H: Handler> Layer<H> for TimeoutLayer {
    type Handler = Timeout<H>;

    fn layer(&self, inner: H) -> Timeout<H> {
        Timeout {
            inner,
            limit: self.limit,
        }
    }
}
