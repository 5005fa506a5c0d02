//! Requests whose reply address carries the request id (NATS: the reply
//! subject `<inbox>.<id>`): nothing of the exchange is written into the
//! request's headers; the adapter sends the id and the deadline its own way.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::{Answer, PendingReplies, RequestError, headers};
use crate::error::Error;
use crate::message::Message;

/// What an adapter sends with one request of [`exchange_addressed`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ticket {
    /// The request's id ([`PendingReplies::next_id`]): its reply is matched
    /// on it, so the reply address must carry it back.
    pub id: String,
    /// When the requester stops waiting, in milliseconds since the Unix
    /// epoch: what [`headers::DEADLINE`] would hold. A responder must not
    /// process the request past it.
    pub deadline_ms: u64,
}

/// [`exchange`](super::exchange) for adapters whose reply address carries
/// the request id: `message` gets no request id, reply address or deadline
/// header; `send` gets them in a [`Ticket`] next to the message. The reply
/// the adapter hands to [`PendingReplies::deliver_to`] (with the id its
/// address carried) ends the exchange; the whole of it is bounded by
/// `timeout`.
///
/// # Errors
///
/// As [`Requester::request`](super::Requester::request); `send`'s own
/// errors are passed through.
///
/// # Cancel safety
///
/// Dropping the future unregisters the request.
pub async fn exchange_addressed<F, Fut>(
    pending: &Arc<PendingReplies>,
    topic: &str,
    message: Message,
    timeout: Duration,
    send: F,
) -> Result<Message, RequestError>
where
    F: FnOnce(Ticket, Message) -> Fut,
    Fut: Future<Output = Result<(), RequestError>>,
{
    let started = Instant::now();
    let ticket = Ticket {
        id: pending.next_id(),
        deadline_ms: headers::deadline_millis(timeout),
    };
    let id = ticket.id.clone();
    let send = move |request| send(ticket, request);
    wait_for_reply(pending, topic, &id, message, timeout, started, send).await
}

/// Registers request `id` in `pending`, sends `request` with `send` and
/// waits for its answer, all within `timeout` from `started`; the reply is
/// made into the request's outcome ([`headers::outcome`]).
pub(super) async fn wait_for_reply<F, Fut>(
    pending: &Arc<PendingReplies>,
    topic: &str,
    id: &str,
    mut request: Message,
    timeout: Duration,
    started: Instant,
    send: F,
) -> Result<Message, RequestError>
where
    F: FnOnce(Message) -> Fut,
    Fut: Future<Output = Result<(), RequestError>>,
{
    let span = crate::telemetry::request_span(topic, &mut request);
    let waiting = pending.register(id);
    let work = async move {
        send(request).await?;
        match waiting.reply().await {
            Some(Answer::Reply(reply)) => Ok(reply),
            Some(Answer::NoResponders) => Err(RequestError::NoResponders {
                topic: topic.to_owned(),
            }),
            None => Err(RequestError::Transport(Error::Closed("reply path"))),
        }
    };
    match tokio::time::timeout(timeout, work).instrument(span).await {
        Ok(Ok(reply)) => headers::outcome(reply),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RequestError::Timeout {
            elapsed: started.elapsed(),
        }),
    }
}
