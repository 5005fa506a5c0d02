//! Resilience guards for any async call: a request, an HTTP call, a
//! database query. The same machinery the consumer runtime uses for
//! handlers, usable outside a consumer.
//!
//! - [`CircuitBreaker`]: [`CircuitBreaker::call`] /
//!   [`CircuitBreaker::call_if`] refuse calls while the breaker is open
//!   ([`BreakerError::Open`], counted in [`CircuitBreaker::rejected`]),
//!   let one probe through after the cool-down, and close on its success.
//!   It is the very breaker of the runtime's
//!   [`CircuitBreakerLayer`](crate::runtime::CircuitBreakerLayer): cheap to
//!   clone, clones share their state, so one breaker can guard every call
//!   to a dependency, from handlers and from direct calls alike.
//! - [`Retry`]: exponential backoff with jitter, after a
//!   [`RetryPolicy`].
//! - [`with_timeout`]: a time limit.
//!
//! Requests have their own timeout; a breaker around them should count
//! only what says something about the other side's health:
//! [`RequestError::is_retryable`](crate::request::RequestError::is_retryable)
//! (timeouts, no responders, transient remote failures), not a rejected
//! request.
//!
//! # Examples
//!
//! A breaker shared by every stock query, with retries inside it:
//!
//! ```
//! use std::time::Duration;
//! use courier_core::Broker;
//! use courier_core::request::RequestError;
//! use courier_core::resilience::{BreakerError, CircuitBreaker, CircuitBreakerConfig, Retry, RetryPolicy};
//!
//! #[derive(serde::Serialize)]
//! struct StockQuery { sku: String }
//! #[derive(Debug, serde::Deserialize)]
//! struct Stock { available: u32 }
//!
//! async fn stock(broker: &Broker, breaker: &CircuitBreaker, sku: &str) -> Result<Stock, BreakerError<RequestError>> {
//!     let retry = Retry::new(RetryPolicy::exponential().max_attempts(3).min_delay(Duration::from_millis(50)));
//!     let query = StockQuery { sku: sku.to_owned() };
//!     breaker
//!         .call_if(
//!             || retry.run_if(
//!                 || broker.request_json("stock.query", &query, Duration::from_secs(1)),
//!                 RequestError::is_retryable,
//!             ),
//!             RequestError::is_retryable,
//!         )
//!         .await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let broker = courier_memory::MemoryBroker::new().into_broker();
//! let breaker = CircuitBreaker::new(CircuitBreakerConfig::default().failure_threshold(1));
//! // Nobody answers stock queries: the first call fails, the breaker opens,
//! // the second is refused without touching the broker.
//! assert!(matches!(stock(&broker, &breaker, "apple").await, Err(BreakerError::Failed(RequestError::NoResponders { .. }))));
//! assert!(stock(&broker, &breaker, "apple").await.unwrap_err().is_open());
//! assert_eq!(breaker.rejected(), 1);
//! # }
//! ```

mod breaker;
mod retry;
mod timeout;

pub use crate::deadline::{deadline_after, system_deadline_after};
pub use crate::runtime::{
    CircuitBreaker, CircuitBreakerConfig, CircuitOpen, CircuitState, Delays, RetryPolicy,
};
pub use breaker::BreakerError;
pub use retry::Retry;
pub use timeout::{CallTimedOut, with_timeout};
