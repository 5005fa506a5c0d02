//! Responders: handlers whose return value is the reply to a request.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::{Envelope, Meta};
use super::error::{FailureKind, HandlerError, HandlerResult, Panicked};
use super::handler::Handler;
use super::request::Request;
use crate::message::Message;
use crate::pubsub::Broker;
use crate::request::{RemoteErrorKind, Requester, headers};

/// A handler that answers requests, built by [`responder`].
pub struct Responder<Req, F> {
    replies: Arc<dyn Requester>,
    f: F,
    _type: PhantomData<fn() -> Req>,
}

impl<Req, F> fmt::Debug for Responder<Req, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("request", &std::any::type_name::<Req>())
            .field("replies", &self.replies)
            .finish_non_exhaustive()
    }
}

/// A handler that answers requests (see [`crate::request`]): the closure
/// gets the request as an [`Envelope<Req>`] (body decoded from JSON) and
/// returns the reply body, which goes back to the requester as JSON through
/// `replies` (the broker, or any [`Requester`], the request came from).
///
/// Run it with a [`Consumer`](super::Consumer) like any handler: same
/// concurrency, ordering lanes, middleware and shutdown.
///
/// - `Ok(reply)`: the reply is sent, then the request is acked.
/// - `Err(error)` (or a panic): an error reply with the error's kind and
///   reason is sent, and the request is acked: the requester sees
///   [`RequestError::Remote`](crate::request::RequestError::Remote) at
///   once, nothing is retried nor dead-lettered.
/// - A body that does not decode: an error reply of kind
///   [`RemoteErrorKind::BadRequest`].
/// - A request whose deadline has passed: acked without calling the
///   closure; nobody waits for its answer.
/// - Sending the reply fails: a transient failure, so the runtime tries the
///   request again (the closure runs again).
/// - A message that was published, not requested (no reply address): the
///   closure runs and its reply is dropped; its error is an ordinary
///   handler failure (retried, then dead-lettered).
///
/// # Examples
///
/// ```
/// use courier_core::runtime::{self, Envelope, HandlerError};
///
/// #[derive(serde::Deserialize)]
/// struct StockQuery { sku: String }
/// #[derive(serde::Serialize)]
/// struct Stock { available: u32 }
///
/// let broker = courier_memory::MemoryBroker::new().into_broker();
/// let handler = runtime::responder(&broker, |query: Envelope<StockQuery>| async move {
///     if query.body.sku.is_empty() {
///         return Err(HandlerError::permanent("empty sku"));
///     }
///     Ok(Stock { available: 3 })
/// });
/// # let _ = handler;
/// ```
pub fn responder<Req, Resp, R, F, Fut>(replies: &R, f: F) -> Responder<Req, F>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    R: Requester + Clone + 'static,
    F: Fn(Envelope<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, HandlerError>> + Send + 'static,
{
    Responder {
        replies: replies_through(replies),
        f,
        _type: PhantomData,
    }
}

/// Where replies go: a [`Broker`]'s adapter itself when it has request/reply
/// (one boxed future less per reply than through the broker), else `replies`.
fn replies_through<R: Requester + Clone + 'static>(replies: &R) -> Arc<dyn Requester> {
    let adapter = (replies as &dyn Any)
        .downcast_ref::<Broker>()
        .and_then(Broker::requester);
    adapter.unwrap_or_else(|| Arc::new(replies.clone()))
}

impl<Req, Resp, F, Fut> Handler for Responder<Req, F>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Envelope<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, HandlerError>> + Send + 'static,
{
    fn call<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(self.call_unboxed(request))
    }

    async fn call_unboxed<'a>(&'a self, request: Request<'a>) -> HandlerResult {
        let message = request.message();
        if headers::reply_address(message).is_none() {
            let body = message.json::<Req>().map_err(HandlerError::permanent)?;
            (self.f)(Envelope::new(body, Meta::from(&request))).await?;
            return Ok(());
        }
        if headers::deadline_passed(message) {
            tracing::debug!(id = %message.id(), "request past its deadline, not processed");
            return Ok(());
        }
        let reply = self.answer(request).await;
        self.replies.reply(message, reply).await?;
        Ok(())
    }
}

impl<Req, Resp, F, Fut> Responder<Req, F>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Envelope<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, HandlerError>> + Send + 'static,
{
    /// The reply to `request`: the closure's answer or its failure.
    async fn answer(&self, request: Request<'_>) -> Message {
        let message = request.message();
        let body = match message.json::<Req>() {
            Ok(body) => body,
            Err(e) => {
                let reason = crate::error::chain(&e);
                return headers::failure(message, RemoteErrorKind::BadRequest, &reason);
            }
        };
        let call = (self.f)(Envelope::new(body, Meta::from(&request)));
        let outcome = match AssertUnwindSafe(call).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => Err(HandlerError::transient(Panicked::from_payload(&*panic))),
        };
        let encoded =
            outcome.and_then(|reply| Message::from_json(&reply).map_err(HandlerError::permanent));
        match encoded {
            Ok(reply) => headers::success(message, reply),
            Err(error) => {
                let kind = match error.kind() {
                    FailureKind::Permanent => RemoteErrorKind::Permanent,
                    _ => RemoteErrorKind::Transient,
                };
                headers::failure(message, kind, &error.reason())
            }
        }
    }
}
