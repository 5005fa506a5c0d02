//! Handlers: what the runtime calls for each delivered message.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use serde::de::DeserializeOwned;

use super::context::{Envelope, Meta};
use super::error::{HandlerError, HandlerResult};
use super::request::Request;
use crate::message::Message;

/// Handles messages. The runtime calls it once per attempt; middleware
/// ([`Layer`](super::Layer)s) wrap one handler in another.
///
/// Most handlers are built from an async closure or a [`Consume`]
/// implementation:
///
/// | built with       | the handler receives                          |
/// |------------------|-----------------------------------------------|
/// | [`typed`]        | the body, decoded from JSON into `T`          |
/// | [`envelope`]     | an [`Envelope<T>`]: body and [`Meta`] context |
/// | [`raw`]          | the [`Message`]                               |
/// | [`raw_envelope`] | an [`Envelope<Bytes>`]: payload and context   |
///
/// Implement `Handler` by hand for full control (the future may borrow the
/// request); middleware does.
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

    /// Handles one attempt as [`call`](Handler::call) does, with a future
    /// that need not be boxed: what a consumer calls when the handler is
    /// not wrapped in layers (a layered stack is type-erased, so it goes
    /// through `call`). The consumer holds the future inside its own
    /// per-delivery future, so a handler that overrides this costs no
    /// allocation per message.
    ///
    /// Provided: returns `call`'s boxed future. The handlers built by
    /// [`raw`], [`typed`], [`envelope`], [`raw_envelope`] and
    /// [`responder`](super::responder()) override it. An override must
    /// behave exactly as `call`.
    fn call_unboxed<'a>(
        &'a self,
        request: Request<'a>,
    ) -> impl Future<Output = HandlerResult> + Send + 'a
    where
        Self: Sized,
    {
        self.call(request)
    }
}

/// A shared, type-erased handler: what [`Layer`](super::Layer)s stack on.
pub type BoxHandler = Arc<dyn Handler>;

/// A layer shared by several consumers (an [`App`](super::App)'s), applied
/// to each consumer's handler.
pub(crate) type SharedLayer = Arc<dyn Fn(BoxHandler) -> BoxHandler + Send + Sync>;

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
        Box::pin(self.call_unboxed(request))
    }

    fn call_unboxed<'a>(
        &'a self,
        request: Request<'a>,
    ) -> impl Future<Output = HandlerResult> + Send + 'a {
        (self.f)(request.message().clone())
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
        Box::pin(self.call_unboxed(request))
    }

    fn call_unboxed<'a>(
        &'a self,
        request: Request<'a>,
    ) -> impl Future<Output = HandlerResult> + Send + 'a {
        match request.message().json::<T>() {
            Ok(value) => Either::Left((self.f)(value)),
            Err(e) => Either::Right(std::future::ready(Err(HandlerError::permanent(e)))),
        }
    }
}

/// Handles messages as [`Envelope`]s: the trait form of a handler, for
/// handlers that are structs with state. Async closures taking an
/// `Envelope<T>` implement it too.
///
/// Turn one into a [`Handler`] with [`envelope`] (JSON bodies) or
/// [`raw_envelope`] (`T` = [`Bytes`], the raw payload).
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use courier_core::runtime::{self, Consume, Envelope, HandlerResult};
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { amount: u64 }
///
/// #[derive(Default)]
/// struct Revenue { total: AtomicU64 }
///
/// impl Consume<OrderPlaced> for Revenue {
///     async fn consume(&self, order: Envelope<OrderPlaced>) -> HandlerResult {
///         self.total.fetch_add(order.body.amount, Ordering::Relaxed);
///         Ok(())
///     }
/// }
///
/// let handler = runtime::envelope(Revenue::default());
/// # let _ = handler;
/// ```
pub trait Consume<T>: Send + Sync + 'static {
    /// Handles one attempt. `Ok` acks the message; see [`HandlerError`] for
    /// failures.
    fn consume(&self, envelope: Envelope<T>) -> impl Future<Output = HandlerResult> + Send;
}

impl<T, F, Fut> Consume<T> for F
where
    F: Fn(Envelope<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send,
{
    fn consume(&self, envelope: Envelope<T>) -> impl Future<Output = HandlerResult> + Send {
        self(envelope)
    }
}

/// A handler of JSON envelopes built by [`envelope`].
pub struct EnvelopeFn<T, C> {
    consume: C,
    _type: PhantomData<fn() -> T>,
}

impl<T, C> fmt::Debug for EnvelopeFn<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeFn")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

/// A handler that receives an [`Envelope<T>`]: the payload decoded from
/// JSON into `T`, with the message's context ([`Meta`]: ids, key, headers,
/// topic, group, attempt, delivery count) and
/// [`Meta::follow_up`] to publish the next message of the flow. Takes an
/// async closure or any [`Consume`] implementation.
///
/// A payload that does not decode is a permanent failure, as with
/// [`typed`].
///
/// # Examples
///
/// ```
/// use courier_core::runtime::{self, Envelope};
///
/// #[derive(serde::Deserialize)]
/// struct OrderPlaced { order: u64 }
///
/// let handler = runtime::envelope(|order: Envelope<OrderPlaced>| async move {
///     println!("order {} in flow {:?}", order.body.order, order.meta.correlation_id());
///     Ok(())
/// });
/// # let _ = handler;
/// ```
pub fn envelope<T, C>(consume: C) -> EnvelopeFn<T, C>
where
    T: DeserializeOwned + Send + 'static,
    C: Consume<T>,
{
    EnvelopeFn {
        consume,
        _type: PhantomData,
    }
}

impl<T, C> Handler for EnvelopeFn<T, C>
where
    T: DeserializeOwned + Send + 'static,
    C: Consume<T>,
{
    fn call<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(self.call_unboxed(request))
    }

    fn call_unboxed<'a>(
        &'a self,
        request: Request<'a>,
    ) -> impl Future<Output = HandlerResult> + Send + 'a {
        match request.message().json::<T>() {
            Ok(body) => Either::Left(self.consume.consume(Envelope {
                body,
                meta: Meta::from(&request),
            })),
            Err(e) => Either::Right(std::future::ready(Err(HandlerError::permanent(e)))),
        }
    }
}

/// A handler of raw envelopes built by [`raw_envelope`].
pub struct RawEnvelopeFn<C> {
    consume: C,
}

impl<C> fmt::Debug for RawEnvelopeFn<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawEnvelopeFn").finish_non_exhaustive()
    }
}

/// A handler that receives an [`Envelope<Bytes>`]: the raw payload with
/// the message's context. Takes an async closure or any
/// `Consume<Bytes>` implementation.
///
/// # Examples
///
/// ```
/// use courier_core::Bytes;
/// use courier_core::runtime::{self, Envelope};
///
/// let handler = runtime::raw_envelope(|e: Envelope<Bytes>| async move {
///     println!("{} bytes from {}", e.body.len(), e.meta.topic());
///     Ok(())
/// });
/// # let _ = handler;
/// ```
pub fn raw_envelope<C: Consume<Bytes>>(consume: C) -> RawEnvelopeFn<C> {
    RawEnvelopeFn { consume }
}

impl<C: Consume<Bytes>> Handler for RawEnvelopeFn<C> {
    fn call<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(self.call_unboxed(request))
    }

    fn call_unboxed<'a>(
        &'a self,
        request: Request<'a>,
    ) -> impl Future<Output = HandlerResult> + Send + 'a {
        self.consume.consume(Envelope {
            body: request.message().payload().clone(),
            meta: Meta::from(&request),
        })
    }
}
