//! A cap on attempts running at once.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use super::Layer;
use crate::runtime::error::HandlerResult;
use crate::runtime::handler::Handler;
use crate::runtime::request::Request;

/// Lets at most a fixed number of attempts run the inner handler at once;
/// the others wait their turn.
///
/// The consumer's own [`concurrency`](crate::runtime::ConsumerBuilder::concurrency)
/// bounds one consumer. This layer bounds whatever shares it: clone one
/// [`ConcurrencyLimitLayer`] into several consumers to protect a dependency
/// they all call.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<H> {
    inner: H,
    permits: Arc<Semaphore>,
}

impl<H: Handler> Handler for ConcurrencyLimit<H> {
    fn call<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            // The semaphore is never closed.
            let _permit = self.permits.acquire().await.expect("semaphore is open");
            self.inner.call(request).await
        })
    }
}

/// Layer of [`ConcurrencyLimit`]. Clones share the limit.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
}

impl ConcurrencyLimitLayer {
    /// At most `limit` attempts at once (0 counts as 1).
    pub fn new(limit: usize) -> Self {
        ConcurrencyLimitLayer {
            permits: Arc::new(Semaphore::new(limit.max(1))),
        }
    }

    /// How many more attempts could start now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

impl<H: Handler> Layer<H> for ConcurrencyLimitLayer {
    type Handler = ConcurrencyLimit<H>;

    fn layer(&self, inner: H) -> ConcurrencyLimit<H> {
        ConcurrencyLimit {
            inner,
            permits: self.permits.clone(),
        }
    }
}
