//! A time limit around any async call.

use std::future::Future;
use std::time::Duration;

/// A call took longer than [`with_timeout`] allowed; it was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("call timed out after {after:?}")]
pub struct CallTimedOut {
    /// The limit.
    pub after: Duration,
}

/// Runs `call` for at most `limit`.
///
/// # Errors
///
/// [`CallTimedOut`] when the limit passed first; `call` is then dropped.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_core::resilience::with_timeout;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let slow = with_timeout(Duration::from_millis(5), std::future::pending::<()>()).await;
/// assert!(slow.is_err());
/// assert_eq!(with_timeout(Duration::from_secs(1), async { 7 }).await, Ok(7));
/// # }
/// ```
pub async fn with_timeout<F: Future>(limit: Duration, call: F) -> Result<F::Output, CallTimedOut> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| CallTimedOut { after: limit })
}
