//! The core contract of courier: one publish/subscribe API for every broker.
//!
//! - [`Message`]: id (UUID v7), optional ordering key, [`Headers`], payload
//!   ([`bytes::Bytes`]), content type, timestamp, correlation and causation ids.
//! - [`Publisher`]: `publish` returns only after the broker took
//!   responsibility for the message; `publish_batch` pipelines.
//! - [`Subscriber`]: `subscribe` to a topic as a consumer group and get a
//!   [`DeliveryStream`]; the same group competes, different groups fan out.
//! - [`Delivery`]: settled once with [`Delivery::ack`] or [`Delivery::nack`];
//!   dropping it unsettled makes the message come back.
//! - [`Broker`]: a publisher and a subscriber chosen at run time.
//! - [`Error`]: one `#[non_exhaustive]` enum with [`Error::is_retryable`].
//! - [`request`]: request/reply on every broker ([`Broker::request`],
//!   answered by a [`runtime::responder`]).
//! - [`resilience`]: circuit breaker, retry with backoff and jitter, and
//!   timeout around any async call.
//! - [`runtime`]: the consumer runtime that runs handlers over a
//!   subscription: concurrency, per-key ordering, retries with backoff,
//!   dead-lettering, middleware, graceful shutdown, metrics.
//! - [`telemetry`]: spans after the OpenTelemetry messaging conventions,
//!   W3C trace context in headers, metrics through the `metrics` facade,
//!   consumer lag and connection health, the same on every adapter.
//!
//! This crate knows no broker. Adapters (`courier-memory`, `courier-amqp`,
//! `courier-kafka`, `courier-nats`) implement the traits, and the conformance
//! suite in `courier-testkit` holds each of them to the same behaviour.
//!
//! # Delivery guarantees
//!
//! At least once: a message is removed only by an ack (or moved by a
//! dead-letter nack). Redelivery happens after a nack, after a delivery is
//! dropped unsettled, and after a consumer or connection is lost while it
//! held the message. Handlers must therefore tolerate duplicates; the
//! idempotency store makes that easy.
//!
//! # Names
//!
//! Topic and group names are checked against the rules in [`name`], the ones
//! every broker can carry unchanged.

pub mod adapter;
mod dead_letter_retry;
mod deadline;
pub mod delivery;
pub mod error;
pub mod headers;
mod id;
pub mod message;
pub mod name;
pub mod prelude;
mod pubsub;
pub mod request;
pub mod resilience;
pub mod runtime;
pub mod telemetry;

pub use delivery::{DeadLetter, Delivery, Nack};
pub use error::{BoxError, BrokerErrorKind, ConnectErrorKind, Error, Result};
pub use headers::{HeaderError, Headers};
pub use message::{Message, MessageId};
pub use pubsub::{
    Broker, Close, DEFAULT_PREFETCH, DeliveryStream, Publisher, StartPosition, Subscriber,
    Subscription,
};

pub use async_trait::async_trait;
pub use bytes::Bytes;
