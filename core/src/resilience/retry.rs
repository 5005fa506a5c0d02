//! Retry with exponential backoff and jitter around any async call.

use std::future::Future;

use crate::runtime::RetryPolicy;

/// Calls an async operation again after failures, waiting between attempts
/// as a [`RetryPolicy`] says (exponential backoff with jitter, the same
/// maths as the consumer's retries).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_core::resilience::Retry;
/// use courier_core::runtime::RetryPolicy;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let retry = Retry::new(RetryPolicy::exponential().max_attempts(3).min_delay(Duration::from_millis(1)));
/// let mut tries = 0;
/// let outcome: Result<u32, &str> = retry
///     .run(|| {
///         tries += 1;
///         let attempt = tries;
///         async move { if attempt < 3 { Err("not yet") } else { Ok(attempt) } }
///     })
///     .await;
/// assert_eq!(outcome, Ok(3));
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Retry {
    policy: RetryPolicy,
}

impl Retry {
    /// Retries as `policy` says.
    pub fn new(policy: RetryPolicy) -> Self {
        Retry { policy }
    }

    /// The policy.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Calls `call` until it succeeds or the policy's attempts are used up,
    /// retrying every error.
    ///
    /// # Errors
    ///
    /// The last attempt's error.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the attempt under way, or the wait.
    pub async fn run<T, E, F, Fut>(&self, call: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_if(call, |_| true).await
    }

    /// As [`Retry::run`], retrying only errors for which `retry_if` is
    /// true (for requests:
    /// [`RequestError::is_retryable`](crate::request::RequestError::is_retryable)).
    ///
    /// # Errors
    ///
    /// The first error not to retry, or the last attempt's error.
    ///
    /// # Cancel safety
    ///
    /// As [`Retry::run`].
    pub async fn run_if<T, E, F, Fut>(
        &self,
        mut call: F,
        retry_if: impl Fn(&E) -> bool,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut delays = self.policy.delays();
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(error) if retry_if(&error) => match delays.next() {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(error),
                },
                Err(error) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_with_growing_delays_until_the_attempts_are_used_up() {
        let policy = RetryPolicy::exponential()
            .max_attempts(4)
            .min_delay(Duration::from_millis(100))
            .without_jitter();
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        let outcome: Result<(), u32> = Retry::new(policy)
            .run(|| {
                at.push(start.elapsed());
                let n = at.len() as u32;
                async move { Err(n) }
            })
            .await;
        assert_eq!(outcome, Err(4));
        assert_eq!(at, [0, 100, 300, 700].map(Duration::from_millis));
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_not_to_retry_ends_at_once() {
        let mut calls = 0;
        let outcome: Result<(), &str> = Retry::default()
            .run_if(
                || {
                    calls += 1;
                    async { Err("bad request") }
                },
                |e| *e != "bad request",
            )
            .await;
        assert_eq!(outcome, Err("bad request"));
        assert_eq!(calls, 1);
    }
}
