//! Request/reply: ask a question over the broker and wait for the answer
//! (the "hybrid" style: synchronous where the caller must know now,
//! asynchronous events everywhere else).
//!
//! - **Requester**: [`Broker::request`](crate::Broker::request)`(topic,
//!   message, timeout)` publishes the request and returns the reply
//!   [`Message`]; [`Broker::request_json`](crate::Broker::request_json)
//!   encodes and decodes JSON bodies. Every adapter implements
//!   [`Requester`] with its broker's native mechanism.
//! - **Responder**: an ordinary handler that returns a reply,
//!   [`runtime::responder`](crate::runtime::responder), run by a
//!   [`Consumer`](crate::runtime::Consumer) like any other: same
//!   concurrency, ordering lanes, middleware and shutdown.
//!
//! # Semantics
//!
//! - **Matching.** Each request gets a fresh request id
//!   ([`headers::REQUEST_ID`]) that its reply carries back; replies are
//!   matched on it, never on the correlation id, which a whole flow shares.
//!   Where the broker's own reply address carries the id (NATS: the reply
//!   subject is `<inbox>.<request id>`), it travels there instead of in
//!   the header, as does the reply address ([`headers::REPLY_TO`]); the
//!   responder's handler sees the address in the header either way.
//!   The reply is [caused by](crate::Message::caused_by) the request, so the
//!   flow's correlation id carries through and its causation id is the
//!   request's id.
//! - **Timeout.** The whole request (sending included) is bounded by its
//!   timeout; past it, [`RequestError::Timeout`]. The deadline travels with
//!   the request ([`headers::DEADLINE`]) and a responder does not process a
//!   request whose deadline has passed (it is acked, and nobody is
//!   answered).
//! - **Cancellation.** Dropping the future of a request stops waiting at
//!   once. A reply that arrives after its requester stopped waiting is
//!   dropped and counted ([`Requester::late_replies`]); it can never be
//!   taken for the answer to another request.
//! - **Remote failures.** A responder's handler error travels back as an
//!   error reply ([`headers::REPLY_STATUS`], [`headers::ERROR_KIND`],
//!   [`headers::ERROR_REASON`]) and becomes [`RequestError::Remote`] with
//!   its kind and reason; the request is acked, not retried nor
//!   dead-lettered. A request body the responder cannot decode comes back
//!   as [`RemoteErrorKind::BadRequest`].
//! - **No responders** ([`RequestError::NoResponders`]) where the broker can
//!   tell at once; elsewhere such a request times out.
//! - **Confirms.** Where the broker confirms a publish (RabbitMQ's publisher
//!   confirm, Kafka's delivery report), a request is sent as any publish,
//!   but its reply does not wait for that confirm: the reply proves the
//!   request arrived, and a broker may confirm only after the responder
//!   has answered (RabbitMQ confirms a persistent message once it is
//!   written to disk). A confirm that comes first and refuses the request
//!   (returned unroutable, nacked) ends the request with that error.
//!
//! # Per broker
//!
//! | broker | request travels | reply travels | no responders | reply guarantee |
//! |---|---|---|---|---|
//! | memory | the topic's groups, in process | straight into the requester's inbox | the topic has no group | in process: lost only if the requester is gone |
//! | NATS | core NATS, to the topic's request subject `_courier.request.<topic>`, where each group's subscriptions listen as one queue group | core NATS, to the requester's inbox subject | no subscription listens | at most once both ways (core NATS) |
//! | RabbitMQ | a publish with `mandatory` on the requester's own channel | direct reply-to (`amq.rabbitmq.reply-to`), consumed without acks | the broker returned the request: no queue bound | at most once (direct reply-to) |
//! | Kafka | a produce to the topic | a reply topic per requester, read by assignment (no consumer group, no rebalancing) | cannot tell: timeout | the reply is stored; read once by its requester |
//!
//! On RabbitMQ, Kafka and memory the request itself has the topic's usual
//! at-least-once delivery (on NATS it is at most once: a request whose
//! responder dies is not redelivered, and the requester times out): a
//! responder that dies mid-request has it redelivered to another, whose
//! reply is then the one the requester gets (or, past the deadline, none:
//! the requester has already seen [`RequestError::Timeout`]). Responders
//! should therefore be idempotent, as any handler.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use courier_core::prelude::*;
//! use courier_core::runtime::{self, Consumer};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct StockQuery { sku: String }
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Stock { available: u32 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = courier_memory::MemoryBroker::new().into_broker();
//! let answer = runtime::responder(&broker, |query: Envelope<StockQuery>| async move {
//!     Ok(Stock { available: if query.body.sku == "apple" { 3 } else { 0 } })
//! });
//! let responder = Consumer::builder(broker.clone(), Subscription::new("stock.query", "stock"), answer)
//!     .start()
//!     .await?;
//!
//! let stock: Stock = broker
//!     .request_json("stock.query", &StockQuery { sku: "apple".into() }, Duration::from_secs(5))
//!     .await?;
//! assert_eq!(stock.available, 3);
//! responder.shutdown().await?;
//! # Ok(()) }
//! ```

mod addressed;
mod broker;
mod error;
pub mod headers;
mod pending;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::message::Message;

pub use addressed::{Ticket, exchange_addressed};
pub use error::{RemoteErrorKind, RequestError};
pub use pending::{Answer, PendingReplies, PendingReply};

/// Sends requests and replies over one broker connection; every adapter
/// implements it with its broker's native mechanism (see the
/// [module docs](self)).
#[async_trait]
pub trait Requester: Send + Sync + fmt::Debug {
    /// Publishes `message` as a request to `topic` and waits at most
    /// `timeout` for the reply.
    ///
    /// # Errors
    ///
    /// [`RequestError::Timeout`], [`RequestError::NoResponders`] where the
    /// broker can tell, [`RequestError::Remote`] when the responder's
    /// handler failed, [`RequestError::Transport`] for broker failures.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops waiting; the request may still reach a
    /// responder, whose reply is then dropped and counted as late.
    async fn request(
        &self,
        topic: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError>;

    /// Sends `reply` to whoever sent `request` (the address in its
    /// [`headers::REPLY_TO`] header). `reply` must already carry the reply
    /// headers ([`headers::success`] or [`headers::failure`]); the
    /// [`responder`](crate::runtime::responder) does this.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`](crate::Error::Unsupported) when `request` has no reply address (see
    /// [`headers::reply_address_of`]), and broker
    /// failures.
    async fn reply(&self, request: &Message, reply: Message) -> crate::Result<()>;

    /// Replies that arrived after their requester stopped waiting (timed
    /// out or dropped), and were dropped.
    fn late_replies(&self) -> u64 {
        0
    }
}

/// Sends a request to `topic` and waits for its reply, for adapters: gives
/// `message` a request id, the reply address `reply_to` and the deadline,
/// registers it in `pending`, calls `send` with it, and waits for the reply
/// that the adapter hands to [`PendingReplies::deliver`] (or the refusal
/// it hands to [`PendingReplies::refuse`]). The whole exchange is bounded
/// by `timeout`.
///
/// # Errors
///
/// As [`Requester::request`]; `send`'s own errors are passed through.
///
/// # Cancel safety
///
/// Dropping the future unregisters the request.
pub async fn exchange<F, Fut>(
    pending: &Arc<PendingReplies>,
    topic: &str,
    reply_to: &str,
    message: Message,
    timeout: Duration,
    send: F,
) -> Result<Message, RequestError>
where
    F: FnOnce(Message) -> Fut,
    Fut: Future<Output = Result<(), RequestError>>,
{
    let started = Instant::now();
    let (id, request) = headers::prepare(message, reply_to, timeout);
    addressed::wait_for_reply(pending, topic, &id, request, timeout, started, send).await
}

/// Sends `body` as a JSON request and decodes the JSON reply.
///
/// # Errors
///
/// As [`Requester::request`], and [`RequestError::Codec`] when `body` does
/// not encode or the reply does not decode into `Resp`.
pub async fn request_json<Req, Resp>(
    requester: &(impl Requester + ?Sized),
    topic: &str,
    body: &Req,
    timeout: Duration,
) -> Result<Resp, RequestError>
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let message = Message::from_json(body).map_err(RequestError::Codec)?;
    let reply = requester.request(topic, message, timeout).await?;
    reply.json::<Resp>().map_err(RequestError::Codec)
}
