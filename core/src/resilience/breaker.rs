//! The circuit breaker around any async call.

use std::future::Future;

use crate::runtime::{CircuitBreaker, CircuitOpen};

/// The outcome of a call guarded by a [`CircuitBreaker`] that failed: the
/// breaker refused it, or the call itself failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BreakerError<E> {
    /// The breaker is open: the call was not made.
    #[error(transparent)]
    Open(CircuitOpen),
    /// The call was made and failed.
    #[error(transparent)]
    Failed(E),
}

impl<E> BreakerError<E> {
    /// The call's own error, if it was made.
    pub fn into_failed(self) -> Option<E> {
        match self {
            BreakerError::Failed(e) => Some(e),
            BreakerError::Open(_) => None,
        }
    }

    /// Whether the breaker refused the call.
    pub fn is_open(&self) -> bool {
        matches!(self, BreakerError::Open(_))
    }
}

impl CircuitBreaker {
    /// Makes the call `call()` if the breaker admits it, and records its
    /// outcome: every `Err` counts as a failure. The same state machine as
    /// the breaker's [`layer`](CircuitBreaker::layer), so one breaker can
    /// guard handlers and direct calls together.
    ///
    /// # Errors
    ///
    /// [`BreakerError::Open`] without calling `call` while the breaker is
    /// open (counted in [`CircuitBreaker::rejected`]), else the call's own
    /// error as [`BreakerError::Failed`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the call; a dropped half-open probe lets
    /// the next call probe instead, and records nothing.
    pub async fn call<T, E, F, Fut>(&self, call: F) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_if(call, |_| true).await
    }

    /// As [`CircuitBreaker::call`], but only errors for which
    /// `is_failure` is true count against the breaker; the others (a bad
    /// request, say) count as successes, since they say nothing about the
    /// dependency's health. For requests, pass
    /// [`RequestError::is_retryable`](crate::request::RequestError::is_retryable).
    ///
    /// # Errors
    ///
    /// As [`CircuitBreaker::call`].
    ///
    /// # Cancel safety
    ///
    /// As [`CircuitBreaker::call`].
    pub async fn call_if<T, E, F, Fut>(
        &self,
        call: F,
        is_failure: impl FnOnce(&E) -> bool,
    ) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let (admission, mut guard) = self.admit_guarded().map_err(BreakerError::Open)?;
        let outcome = call().await;
        guard.disarm();
        let failed = outcome.as_ref().is_err_and(is_failure);
        self.record(admission, failed);
        outcome.map_err(BreakerError::Failed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use crate::runtime::{CircuitBreakerConfig, CircuitState};

    use super::*;

    #[derive(Debug, PartialEq)]
    struct Down;

    async fn failing(calls: &AtomicU32) -> Result<(), Down> {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(Down)
    }

    async fn healthy(calls: &AtomicU32) -> Result<(), Down> {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn opens_fails_fast_half_opens_and_closes() {
        let breaker = CircuitBreaker::new(
            CircuitBreakerConfig::default()
                .failure_threshold(3)
                .cool_down(Duration::from_secs(5)),
        );
        let shared = breaker.clone();
        let calls = AtomicU32::new(0);

        for _ in 0..3 {
            let e = shared.call(|| failing(&calls)).await.unwrap_err();
            assert!(matches!(e, BreakerError::Failed(Down)));
        }
        assert_eq!(breaker.state(), CircuitState::Open);

        // Open: refused without calling, counted, on every clone.
        for _ in 0..4 {
            assert!(
                breaker
                    .call(|| healthy(&calls))
                    .await
                    .unwrap_err()
                    .is_open()
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(shared.rejected(), 4);

        // After the cool-down one probe passes; its failure opens it again.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert!(
            !breaker
                .call(|| failing(&calls))
                .await
                .unwrap_err()
                .is_open()
        );
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        // The next probe succeeds: closed, calls pass again.
        tokio::time::advance(Duration::from_secs(5)).await;
        breaker.call(|| healthy(&calls)).await.unwrap();
        assert_eq!(breaker.state(), CircuitState::Closed);
        breaker.call(|| healthy(&calls)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        assert_eq!(breaker.rejected(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_cool_down_keeps_it_open_without_panicking() {
        let breaker = CircuitBreaker::new(
            CircuitBreakerConfig::default()
                .failure_threshold(1)
                .cool_down(Duration::MAX),
        );
        let calls = AtomicU32::new(0);
        assert!(
            !breaker
                .call(|| failing(&calls))
                .await
                .unwrap_err()
                .is_open()
        );
        assert_eq!(breaker.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_secs(365 * 86_400)).await;
        assert!(
            breaker
                .call(|| healthy(&calls))
                .await
                .unwrap_err()
                .is_open()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_that_are_not_failures_keep_it_closed() {
        let breaker = CircuitBreaker::new(CircuitBreakerConfig::default().failure_threshold(1));
        let calls = AtomicU32::new(0);
        for _ in 0..5 {
            let e = breaker
                .call_if(|| failing(&calls), |_| false)
                .await
                .unwrap_err();
            assert!(!e.is_open());
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_lets_the_next_call_probe() {
        let breaker = CircuitBreaker::new(
            CircuitBreakerConfig::default()
                .failure_threshold(1)
                .cool_down(Duration::from_secs(1)),
        );
        let calls = AtomicU32::new(0);
        let _ = breaker.call(|| failing(&calls)).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = breaker.call(std::future::pending::<Result<(), Down>>);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), probe)
                .await
                .is_err()
        );
        breaker.call(|| healthy(&calls)).await.unwrap();
        assert_eq!(breaker.state(), CircuitState::Closed);
    }
}
