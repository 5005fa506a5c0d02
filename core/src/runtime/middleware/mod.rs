//! Middleware: [`Layer`]s that wrap a [`Handler`] in another, in the style
//! of tower.
//!
//! Each layer does one thing: [`TimeoutLayer`] bounds an attempt,
//! [`CircuitBreakerLayer`] stops calling a failing dependency for a while,
//! [`ConcurrencyLimitLayer`] caps attempts running at once (across
//! consumers, if they share it), [`HookLayer`] runs code before and after
//! each attempt (the idempotency store plugs in here) and
//! [`CatchPanicLayer`] turns a panic into a transient failure.
//!
//! Layers compose statically (`TimeoutLayer::new(d).layer(handler)` is a
//! `Timeout<H>`), or dynamically through
//! [`ConsumerBuilder::layer`](super::ConsumerBuilder::layer), which stacks
//! them on a [`BoxHandler`](super::BoxHandler), the first added outermost.

mod catch_panic;
mod circuit_breaker;
mod concurrency;
mod hook;
mod timeout;

pub use catch_panic::{CatchPanic, CatchPanicLayer};
pub use circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitState, GuardedByBreaker,
};
pub use concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
pub use hook::{Hook, HookLayer, Hooked, Proceed};
pub use timeout::{Timeout, TimeoutLayer};

use super::handler::Handler;

/// Wraps a handler in another, as tower's `Layer` wraps a service.
///
/// Implement it for `H: Handler` generically so the layer works both on
/// concrete handlers and on [`BoxHandler`](super::BoxHandler)s.
pub trait Layer<H> {
    /// The wrapped handler.
    type Handler: Handler;

    /// Wraps `inner`.
    fn layer(&self, inner: H) -> Self::Handler;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::Message;
    use crate::runtime::{HandlerError, HandlerResult, Panicked, Request, TimedOut, raw};

    async fn call(handler: &impl Handler) -> HandlerResult {
        let message = Message::new("m");
        handler.call(Request::new(&message, "t", "g")).await
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_fails_slow_attempts_transiently() {
        let slow = TimeoutLayer::new(Duration::from_secs(1)).layer(raw(|_m| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        }));
        let error = call(&slow).await.unwrap_err();
        assert!(!error.is_permanent());
        assert!(error.source().is::<TimedOut>());
        let quick = TimeoutLayer::new(Duration::from_secs(1)).layer(raw(|_m| async { Ok(()) }));
        call(&quick).await.expect("in time");
    }

    #[tokio::test]
    async fn panics_become_transient_failures() {
        let panicking = CatchPanicLayer.layer(raw(|_m| async { panic!("boom") }));
        let error = call(&panicking).await.unwrap_err();
        assert!(!error.is_permanent());
        assert_eq!(error.to_string(), "handler panicked: boom");
        assert!(error.source().is::<Panicked>());
    }

    #[derive(Default)]
    struct Recorder {
        before: AtomicU32,
        after_err: AtomicU32,
        skip: bool,
    }

    #[async_trait]
    impl Hook for Recorder {
        async fn before(&self, _request: &Request<'_>) -> Result<Proceed, HandlerError> {
            self.before.fetch_add(1, Ordering::SeqCst);
            Ok(if self.skip {
                Proceed::Skip
            } else {
                Proceed::Handle
            })
        }

        async fn after(&self, _request: &Request<'_>, outcome: HandlerResult) -> HandlerResult {
            if outcome.is_err() {
                self.after_err.fetch_add(1, Ordering::SeqCst);
            }
            outcome
        }
    }

    #[tokio::test]
    async fn hooks_run_around_attempts_and_can_skip_them() {
        let calls = Arc::new(AtomicU32::new(0));
        let counting = {
            let calls = calls.clone();
            raw(move |_m| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(HandlerError::transient("nope")) }
            })
        };
        let recorder = Arc::new(Recorder::default());
        let hooked = HookLayer::from_arc(recorder.clone()).layer(CatchPanic::new(counting));
        assert!(call(&hooked).await.is_err());
        assert_eq!(recorder.before.load(Ordering::SeqCst), 1);
        assert_eq!(recorder.after_err.load(Ordering::SeqCst), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let skipping = HookLayer::new(Recorder {
            skip: true,
            ..Recorder::default()
        })
        .layer(raw(|_m| async { panic!("must not be called") }));
        call(&skipping).await.expect("skipped counts as handled");
    }

    #[tokio::test]
    async fn concurrency_limit_is_shared_by_clones() {
        let limit = ConcurrencyLimitLayer::new(2);
        let running = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let blocking = || {
            let (running, most, release) = (running.clone(), most.clone(), release.clone());
            raw(move |_m| {
                let (running, most, release) = (running.clone(), most.clone(), release.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    release.acquire().await.expect("open").forget();
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            })
        };
        // Two handlers (two consumers, say), each behind its own clone.
        let first = limit.clone().layer(blocking());
        let second = limit.clone().layer(blocking());
        let check = async {
            while running.load(Ordering::SeqCst) < 2 {
                tokio::task::yield_now().await;
            }
            assert_eq!(
                limit.available(),
                0,
                "the clones took the original's permits"
            );
            // All three attempts are polled in turn by the join below: the
            // third has had every chance to start.
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            assert_eq!(
                running.load(Ordering::SeqCst),
                2,
                "a third attempt ran past the shared limit"
            );
            release.add_permits(3);
        };
        let checked = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(call(&first), call(&second), call(&first), check)
        })
        .await
        .expect("two attempts start, the third after them");
        let (a, b, c, ()) = checked;
        a.unwrap();
        b.unwrap();
        c.unwrap();
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(limit.available(), 2);
    }
}
