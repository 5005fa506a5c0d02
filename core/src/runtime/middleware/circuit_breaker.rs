//! Stop calling a failing dependency for a while.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::Layer;
use crate::runtime::error::{CircuitOpen, FailureKind, HandlerError, HandlerResult};
use crate::runtime::handler::Handler;
use crate::runtime::request::Request;

/// Settings of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// Consecutive transient failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before it lets one probe through.
    pub cool_down: Duration,
}

impl Default for CircuitBreakerConfig {
    /// Opens after 5 consecutive failures, probes after 30 s.
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

impl CircuitBreakerConfig {
    /// Sets [`CircuitBreakerConfig::failure_threshold`] (0 counts as 1).
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// Sets [`CircuitBreakerConfig::cool_down`].
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }
}

/// The state of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitState {
    /// Attempts pass; consecutive failures are counted.
    Closed,
    /// Attempts are refused until the cool-down ends.
    Open,
    /// The cool-down ended: one probe attempt passes; its success closes the
    /// breaker, its failure opens it again.
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// A circuit breaker: after [`failure_threshold`](CircuitBreakerConfig::failure_threshold)
/// consecutive transient failures it opens and refuses attempts with a
/// transient [`CircuitOpen`] error (hinting the time left, so the consumer
/// waits at least that long before retrying the message); after the
/// cool-down it lets a single probe through, closing on its success and
/// opening again on its failure.
///
/// Only transient failures count: a permanent failure (the message is bad)
/// says nothing about the dependency and counts as a success. The clock is
/// tokio's, so tests can drive it with paused time.
///
/// Cheap to clone; clones share the state, so one breaker can guard several
/// consumers that call the same dependency.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_core::runtime::{self, CircuitBreaker, CircuitBreakerConfig, CircuitState, Layer};
///
/// let breaker = CircuitBreaker::new(
///     CircuitBreakerConfig::default()
///         .failure_threshold(3)
///         .cool_down(Duration::from_secs(10)),
/// );
/// let handler = breaker.layer().layer(runtime::raw(|_message| async { Ok(()) }));
/// assert_eq!(breaker.state(), CircuitState::Closed);
/// # let _ = handler;
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    state: Arc<Mutex<State>>,
    rejected: Arc<AtomicU64>,
}

/// Whether an admitted attempt is the half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Normal,
    Probe,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        CircuitBreaker {
            config,
            state: Arc::new(Mutex::new(State::Closed { failures: 0 })),
            rejected: Arc::default(),
        }
    }

    /// Calls and attempts refused without being made because the breaker
    /// was open (or its probe was under way), over the breaker's life.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The settings.
    pub fn config(&self) -> CircuitBreakerConfig {
        self.config
    }

    /// The current state. An open breaker whose cool-down has ended reports
    /// [`CircuitState::HalfOpen`].
    pub fn state(&self) -> CircuitState {
        match *self.lock() {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { until } if Instant::now() < until => CircuitState::Open,
            State::Open { .. } | State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// A layer guarding handlers with this breaker.
    pub fn layer(&self) -> CircuitBreakerLayer {
        CircuitBreakerLayer {
            breaker: self.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a call (counting a refusal), arming a probe guard for the
    /// half-open probe; see [`ProbeGuard`].
    pub(crate) fn admit_guarded(&self) -> Result<(Admission, ProbeGuard<'_>), CircuitOpen> {
        let admission = self.admit().inspect_err(|_| {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        })?;
        Ok((
            admission,
            ProbeGuard {
                breaker: self,
                armed: admission == Admission::Probe,
            },
        ))
    }

    fn admit(&self) -> Result<Admission, CircuitOpen> {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(Admission::Normal),
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    Err(CircuitOpen {
                        retry_in: until - now,
                    })
                } else {
                    *state = State::HalfOpen { probing: true };
                    Ok(Admission::Probe)
                }
            }
            State::HalfOpen { probing: true } => Err(CircuitOpen {
                retry_in: self.config.cool_down,
            }),
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Ok(Admission::Probe)
            }
        }
    }

    pub(crate) fn record(&self, admission: Admission, failed: bool) {
        let mut state = self.lock();
        let open = State::Open {
            until: Instant::from_std(crate::deadline::deadline_after(
                Instant::now().into_std(),
                self.config.cool_down,
            )),
        };
        *state = match (&*state, failed) {
            (_, false) => State::Closed { failures: 0 },
            (State::Closed { failures }, true) => {
                let failures = failures + 1;
                if failures >= self.config.failure_threshold {
                    open
                } else {
                    State::Closed { failures }
                }
            }
            // The probe failed: open again.
            (State::HalfOpen { .. }, true) if admission == Admission::Probe => open,
            // A late failure of an attempt admitted before the breaker
            // opened changes nothing.
            (State::HalfOpen { probing }, true) => State::HalfOpen { probing: *probing },
            (State::Open { until }, true) => State::Open { until: *until },
        };
    }
}

/// Lets another probe through if the probe's attempt was dropped unfinished.
pub(crate) struct ProbeGuard<'a> {
    breaker: &'a CircuitBreaker,
    armed: bool,
}

impl ProbeGuard<'_> {
    /// The attempt finished: its outcome is recorded instead.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.breaker.lock();
            if let State::HalfOpen { probing: true } = *state {
                *state = State::HalfOpen { probing: false };
            }
        }
    }
}

/// A handler guarded by a [`CircuitBreaker`].
#[derive(Debug, Clone)]
pub struct GuardedByBreaker<H> {
    inner: H,
    breaker: CircuitBreaker,
}

impl<H: Handler> Handler for GuardedByBreaker<H> {
    fn call<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            let (admission, mut guard) = match self.breaker.admit_guarded() {
                Ok(admitted) => admitted,
                Err(open) => {
                    let retry_in = open.retry_in;
                    return Err(HandlerError::transient(open).retry_after(retry_in));
                }
            };
            let outcome = self.inner.call(request).await;
            guard.disarm();
            let failed = outcome
                .as_ref()
                .is_err_and(|e| e.kind() == FailureKind::Transient);
            self.breaker.record(admission, failed);
            outcome
        })
    }
}

/// Layer of [`GuardedByBreaker`]; made by [`CircuitBreaker::layer`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    breaker: CircuitBreaker,
}

impl<H: Handler> Layer<H> for CircuitBreakerLayer {
    type Handler = GuardedByBreaker<H>;

    fn layer(&self, inner: H) -> GuardedByBreaker<H> {
        GuardedByBreaker {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use tokio::sync::Notify;

    use super::*;
    use crate::Message;

    /// Fails while `failing`, and waits for `gate` while `gated`.
    #[derive(Default)]
    struct Dependency {
        failing: AtomicBool,
        gated: AtomicBool,
        gate: Notify,
        calls: AtomicU32,
    }

    impl Handler for Arc<Dependency> {
        fn call<'a>(&'a self, _request: Request<'a>) -> BoxFuture<'a, HandlerResult> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if self.gated.load(Ordering::SeqCst) {
                    self.gate.notified().await;
                }
                if self.failing.load(Ordering::SeqCst) {
                    Err(HandlerError::transient("dependency down"))
                } else {
                    Ok(())
                }
            })
        }
    }

    async fn call(handler: &impl Handler) -> HandlerResult {
        let message = Message::new("m");
        handler.call(Request::new(&message, "t", "g")).await
    }

    fn open_hint(outcome: HandlerResult) -> Duration {
        let error = outcome.expect_err("refused");
        assert!(error.source().is::<CircuitOpen>(), "{error:?}");
        error.retry_after_hint().expect("a retry-after hint")
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_recovers_through_a_probe() {
        let dependency = Arc::new(Dependency::default());
        let breaker = CircuitBreaker::new(
            CircuitBreakerConfig::default()
                .failure_threshold(3)
                .cool_down(Duration::from_secs(10)),
        );
        let guarded = Arc::new(breaker.layer().layer(dependency.clone()));

        // Failures below the threshold, interrupted by a success, do not open it.
        dependency.failing.store(true, Ordering::SeqCst);
        assert!(call(&guarded).await.is_err());
        assert!(call(&guarded).await.is_err());
        dependency.failing.store(false, Ordering::SeqCst);
        call(&guarded).await.expect("healthy");
        assert_eq!(breaker.state(), CircuitState::Closed);

        // Three in a row open it; then the dependency is not called.
        dependency.failing.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            assert!(call(&guarded).await.is_err());
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(dependency.calls.load(Ordering::SeqCst), 6);
        assert_eq!(open_hint(call(&guarded).await), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(open_hint(call(&guarded).await), Duration::from_secs(6));
        assert_eq!(dependency.calls.load(Ordering::SeqCst), 6);

        // After the cool-down one probe passes; it fails: open again.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert!(
            !call(&guarded)
                .await
                .unwrap_err()
                .source()
                .is::<CircuitOpen>()
        );
        assert_eq!(dependency.calls.load(Ordering::SeqCst), 7);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(open_hint(call(&guarded).await), Duration::from_secs(10));

        // Next probe: while it runs, everything else is refused; it
        // succeeds and closes the breaker.
        tokio::time::advance(Duration::from_secs(10)).await;
        dependency.failing.store(false, Ordering::SeqCst);
        dependency.gated.store(true, Ordering::SeqCst);
        let probe = tokio::spawn({
            let guarded = guarded.clone();
            async move { call(&guarded).await }
        });
        while dependency.calls.load(Ordering::SeqCst) < 8 {
            tokio::task::yield_now().await;
        }
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        open_hint(call(&guarded).await);
        dependency.gated.store(false, Ordering::SeqCst);
        dependency.gate.notify_one();
        probe.await.unwrap().expect("probe succeeds");
        assert_eq!(breaker.state(), CircuitState::Closed);
        call(&guarded).await.expect("closed again");
        assert_eq!(dependency.calls.load(Ordering::SeqCst), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_do_not_open_it() {
        let breaker = CircuitBreaker::new(CircuitBreakerConfig::default().failure_threshold(1));
        let guarded = breaker.layer().layer(crate::runtime::raw(|_m| async {
            Err(HandlerError::permanent("bad message"))
        }));
        for _ in 0..5 {
            assert!(call(&guarded).await.unwrap_err().is_permanent());
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
    }
}
