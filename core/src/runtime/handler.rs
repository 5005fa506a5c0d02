//! Handlers: what the runtime calls for each delivered message.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use super::error::{HandlerError, HandlerResult};
use crate::message::Message;

/// One attempt at handling one delivered message: the message and where it
/// came from. Cheap to copy; borrowed from the runtime for the attempt.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    message: &'a Message,
    topic: &'a str,
    group: &'a str,
    attempt: u32,
    delivery_count: Option<u32>,
}

impl<'a> Request<'a> {
    /// A request, for the runtime and for testing handlers and middleware.
    pub fn new(message: &'a Message, topic: &'a str, group: &'a str) -> Self {
        Request {
            message,
            topic,
            group,
            attempt: 1,
            delivery_count: None,
        }
    }

    /// Sets the attempt number (1 for the first attempt).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the broker's delivery count.
    pub fn with_delivery_count(mut self, count: Option<u32>) -> Self {
        self.delivery_count = count;
        self
    }

    /// The message.
    pub fn message(&self) -> &'a Message {
        self.message
    }

    /// The topic it was consumed from.
    pub fn topic(&self) -> &'a str {
        self.topic
    }

    /// The consumer group.
    pub fn group(&self) -> &'a str {
        self.group
    }

    /// Which attempt this is within the current delivery, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many times the broker has delivered the message, when it tells;
    /// see [`Delivery::delivery_count`](crate::Delivery::delivery_count).
    pub fn delivery_count(&self) -> Option<u32> {
        self.delivery_count
    }
}

/// Handles messages. The runtime calls it once per attempt; middleware
/// ([`Layer`](super::Layer)s) wrap one handler in another.
///
/// Write one by hand for full control (the future may borrow the request),
/// or build one from an async closure with [`raw`] or [`typed`].
///
/// The consumer polls the future first on its dispatch task and moves it
/// to a task of its own when it first waits (see the [module
/// docs](super)): do not block the thread in it; use
/// `tokio::task::spawn_blocking` for long computations.
///
/// # Cancel safety
///
/// The runtime drops the future when a shutdown deadline passes; the message
/// is then requeued and will be handled again. Handlers must tolerate that,
/// as they tolerate any redelivery.
pub trait Handler: Send + Sync + 'static {
    /// Handles one attempt. `Ok` acks the message; see [`HandlerError`] for
    /// failures.
    fn call<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, HandlerResult>;
}

/// A shared, type-erased handler: what [`Layer`](super::Layer)s stack on.
pub type BoxHandler = Arc<dyn Handler>;

impl<H: Handler + ?Sized> Handler for Arc<H> {
    fn call<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, HandlerResult> {
        (**self).call(request)
    }
}

/// A handler of raw messages built by [`raw`].
pub struct RawFn<F> {
    f: F,
}

impl<F> fmt::Debug for RawFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawFn")
            .field("f", &std::any::type_name::<F>())
            .finish()
    }
}

/// A handler from an async closure over the raw [`Message`] (a clone, so the
/// future owns it).
///
/// # Examples
///
/// ```
/// use courier_core::runtime::{self, HandlerError};
/// use courier_core::Message;
///
/// let handler = runtime::raw(|message: Message| async move {
///     let text = std::str::from_utf8(message.payload()).map_err(HandlerError::permanent)?;
///     println!("got {text}");
///     Ok(())
/// });
/// # let _ = handler;
/// ```
pub fn raw<F, Fut>(f: F) -> RawFn<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    RawFn { f }
}

impl<F, Fut> Handler for RawFn<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin((self.f)(request.message().clone()))
    }
}

/// A handler of JSON payloads decoded into `T`, built by [`typed`].
pub struct TypedFn<T, F> {
    f: F,
    _type: PhantomData<fn() -> T>,
}

impl<T, F> fmt::Debug for TypedFn<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedFn")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

/// A handler from an async closure over the payload decoded from JSON into
/// `T`. A payload that does not decode is a permanent failure: the message
/// goes to the dead-letter topic on its first attempt, with serde's reason,
/// and the closure is not called.
///
/// # Examples
///
/// ```
/// use courier_core::runtime;
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { order: u64 }
///
/// let handler = runtime::typed(|event: OrderPlaced| async move {
///     println!("order {}", event.order);
///     Ok(())
/// });
/// # let _ = handler;
/// ```
pub fn typed<T, F, Fut>(f: F) -> TypedFn<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    TypedFn {
        f,
        _type: PhantomData,
    }
}

impl<T, F, Fut> Handler for TypedFn<T, F>
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, HandlerResult> {
        match request.message().json_as::<T>() {
            Ok(value) => Box::pin((self.f)(value)),
            Err(e) => Box::pin(std::future::ready(Err(HandlerError::permanent(e)))),
        }
    }
}
