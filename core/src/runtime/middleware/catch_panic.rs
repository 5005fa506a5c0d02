//! Panics as transient failures.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::Layer;
use crate::runtime::error::{HandlerError, HandlerResult, Panicked};
use crate::runtime::handler::Handler;
use crate::runtime::request::Request;

/// Turns a panic of the inner handler (while creating or polling its
/// future) into a transient [`Panicked`] failure.
///
/// When layers are added, the consumer puts one around the user's handler,
/// so middleware sees a panic as an ordinary failure (a hook's `after`
/// runs, a breaker counts it). The consumer also catches panics of the
/// whole stack itself, so a panicking layer cannot crash it either.
#[derive(Debug, Clone)]
pub struct CatchPanic<H> {
    inner: H,
}

impl<H> CatchPanic<H> {
    /// Wraps `inner`.
    pub fn new(inner: H) -> Self {
        CatchPanic { inner }
    }
}

impl<H: Handler> Handler for CatchPanic<H> {
    fn call<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, HandlerResult> {
        // The inner call runs inside the poll, so a panic while building the
        // future is caught as well.
        let attempt = AssertUnwindSafe(async move { self.inner.call(request).await });
        Box::pin(attempt.catch_unwind().map(|outcome| {
            outcome.unwrap_or_else(|payload| {
                Err(HandlerError::transient(Panicked::from_payload(&*payload)))
            })
        }))
    }
}

/// Layer of [`CatchPanic`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<H: Handler> Layer<H> for CatchPanicLayer {
    type Handler = CatchPanic<H>;

    fn layer(&self, inner: H) -> CatchPanic<H> {
        CatchPanic::new(inner)
    }
}
