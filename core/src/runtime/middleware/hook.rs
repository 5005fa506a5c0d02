//! Code that runs before and after each attempt.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::Layer;
use crate::runtime::error::{HandlerError, HandlerResult};
use crate::runtime::handler::Handler;
use crate::runtime::request::Request;

/// What to do with an attempt after [`Hook::before`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Proceed {
    /// Call the handler.
    Handle,
    /// Do not call the handler and report success, so the message is acked
    /// (an idempotency store that knows the message was already handled).
    Skip,
}

/// Runs before and after each attempt: the extension point for the
/// idempotency store (claim before, complete or release after), tracing,
/// metrics and auditing.
///
/// `after` runs for every attempt that reached the handler or was skipped,
/// including failures and caught panics, as long as the attempt was not
/// cancelled (a [`TimeoutLayer`](super::TimeoutLayer) outside the hook, or a
/// shutdown deadline, drops it; put timeouts inside hooks that must see
/// every outcome).
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use courier_core::async_trait;
/// use courier_core::runtime::{self, HandlerError, HandlerResult, Hook, HookLayer, Layer, Proceed, Request};
///
/// #[derive(Default)]
/// struct CountFailures(AtomicU64);
///
/// #[async_trait]
/// impl Hook for CountFailures {
///     async fn after(&self, _request: &Request<'_>, outcome: HandlerResult) -> HandlerResult {
///         if outcome.is_err() {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///         outcome
///     }
/// }
///
/// let handler = HookLayer::new(CountFailures::default())
///     .layer(runtime::raw(|_message| async { Ok(()) }));
/// # let _ = handler;
/// ```
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// Runs before the handler. `Ok(Proceed::Skip)` acks without handling;
    /// an error fails the attempt without calling the handler (`after` is
    /// not called then).
    ///
    /// # Errors
    ///
    /// A failure of the hook itself, which fails the attempt.
    async fn before(&self, request: &Request<'_>) -> Result<Proceed, HandlerError> {
        let _ = request;
        Ok(Proceed::Handle)
    }

    /// Runs after the handler (or after a skip, with `Ok`), and may change
    /// the outcome.
    async fn after(&self, request: &Request<'_>, outcome: HandlerResult) -> HandlerResult {
        let _ = request;
        outcome
    }
}

/// A handler with a [`Hook`] around it.
#[derive(Debug, Clone)]
pub struct Hooked<H, K> {
    inner: H,
    hook: Arc<K>,
}

impl<H: Handler, K: Hook> Handler for Hooked<H, K> {
    fn call<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            let outcome = match self.hook.before(&request).await? {
                Proceed::Handle => self.inner.call(request).await,
                Proceed::Skip => Ok(()),
            };
            self.hook.after(&request, outcome).await
        })
    }
}

/// Layer of [`Hooked`]. Clones share the hook.
#[derive(Debug)]
pub struct HookLayer<K> {
    hook: Arc<K>,
}

impl<K> Clone for HookLayer<K> {
    fn clone(&self) -> Self {
        HookLayer {
            hook: self.hook.clone(),
        }
    }
}

impl<K: Hook> HookLayer<K> {
    /// Runs `hook` around every attempt.
    pub fn new(hook: K) -> Self {
        HookLayer {
            hook: Arc::new(hook),
        }
    }

    /// Shares an existing hook.
    pub fn from_arc(hook: Arc<K>) -> Self {
        HookLayer { hook }
    }
}

impl<H: Handler, K: Hook> Layer<H> for HookLayer<K> {
    type Handler = Hooked<H, K>;

    fn layer(&self, inner: H) -> Hooked<H, K> {
        Hooked {
            inner,
            hook: self.hook.clone(),
        }
    }
}
