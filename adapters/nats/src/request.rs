//! Request/reply over core NATS: requests go to the topic's request
//! subject, where every subscription of the topic listens as a queue group
//! (one member per group answers); replies come back to the requester's
//! inbox. A request nobody listens for gets the server's no-responders
//! status.

use std::sync::Arc;
use std::task::Poll;

use courier_core::adapter::{self, Acknowledger};
use courier_core::request::{RemoteErrorKind, headers};
use courier_core::{Delivery, DeliveryStream, Message, Nack, Result, Subscription, async_trait};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::compact::{decode_with_subject, encode, reply_fields};
use crate::config::consumer_name;
use crate::connection::Inner;
use crate::delivery::Pulled;
use crate::error::op_error;
use crate::flow::Flow;

/// The core NATS subject the requests of `topic` go to. It is not a
/// subject of the topic's stream, so requests are not stored.
pub fn request_subject(topic: &str) -> String {
    // Built at its size: one allocation per request.
    ["_courier.request.", topic].concat()
}

/// The topic's requests for `subscription`'s group: a queue subscription
/// to the request subject, in place on the server when this returns.
pub(crate) async fn listen(
    inner: &Inner,
    subscription: &Subscription,
) -> Result<async_nats::Subscriber> {
    let requests = inner
        .client
        .queue_subscribe(
            request_subject(subscription.topic()),
            consumer_name(subscription.group()),
        )
        .await
        .map_err(|e| op_error("subscribe to requests", e))?;
    // `flush` only writes the subscription out; a round trip on the same
    // connection proves the server has it (it handles a connection's
    // commands in order), so a request sent right after finds it.
    inner
        .round_trip()
        .await
        .map_err(|e| op_error("subscribe to requests", e))?;
    Ok(requests)
}

/// The delivery stream of a subscription: what its pull loop sends into
/// `pulled`, and the requests of `requests`, turned into deliveries as
/// they are polled (no task in between). Taking the last message of
/// `pulled` tells `flow`, whose pull loop may be waiting for that. A
/// stale message (pulled before a connection loss, and the client is not
/// connected to the same server again) is given back instead of handed
/// out (see [`Pulled`]). It ends when the pull loop ends; dropping it
/// unsubscribes from the requests.
pub(crate) fn merge(
    inner: Arc<Inner>,
    topic: Arc<str>,
    mut pulled: mpsc::Receiver<Result<Pulled>>,
    flow: Arc<Flow>,
    requests: async_nats::Subscriber,
) -> DeliveryStream {
    let mut requests = Some(requests);
    // The connection epoch of the last stale message given back, so that
    // a loss is logged once, not once per message.
    let mut logged_epoch = None;
    // What the next give-back waits for: the NAKs of the one before.
    let mut given_back = None;
    Box::pin(futures::stream::poll_fn(move |cx| {
        let mut stale = Vec::new();
        // The server connected to now, read once a poll and only for a
        // message pulled before a connection loss.
        let mut server_now = None;
        let next = loop {
            match pulled.poll_recv(cx) {
                Poll::Ready(None) => {
                    requests = None;
                    break Some(None);
                }
                Poll::Ready(Some(Ok(message))) if message.is_stale(&inner, &mut server_now) => {
                    // Its place in the flow comes back once it is NAKed,
                    // which wakes the pull loop.
                    stale.push(message);
                }
                Poll::Ready(Some(item)) => {
                    if pulled.is_empty() {
                        // The pull loop waits for room only while this
                        // stream still holds messages.
                        flow.drained();
                    }
                    break Some(Some(item.map(Pulled::into_delivery)));
                }
                Poll::Pending => break None,
            }
        };
        if !stale.is_empty() {
            let epoch = inner.connection_epoch();
            if logged_epoch != Some(epoch) {
                logged_epoch = Some(epoch);
                tracing::debug!(
                    topic = %topic,
                    count = stale.len(),
                    "giving back messages pulled from a server the client is no longer \
                     connected to"
                );
            }
            given_back = Pulled::give_back(&inner, stale, given_back.take());
        }
        if let Some(next) = next {
            return Poll::Ready(next);
        }
        while let Some(listening) = requests.as_mut() {
            match listening.poll_next_unpin(cx) {
                Poll::Ready(Some(request)) => {
                    if let Some(delivery) = core_delivery(&inner, &topic, request) {
                        return Poll::Ready(Some(Ok(delivery)));
                    }
                }
                Poll::Ready(None) => requests = None,
                Poll::Pending => break,
            }
        }
        Poll::Pending
    }))
}

/// A request received over core NATS as a delivery: its reply subject is
/// the reply address, and settling it sends nothing but a refusal.
fn core_delivery(
    inner: &Arc<Inner>,
    topic: &Arc<str>,
    request: async_nats::Message,
) -> Option<Delivery> {
    let reply = request.reply.as_ref().map(|reply| reply.as_str());
    let mut message = match decode_with_subject(request.headers.as_ref(), reply, request.payload) {
        Ok(message) => message,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable request dropped");
            return None;
        }
    };
    if let Some(reply) = &request.reply {
        let _ = adapter::restore_header(
            adapter::headers_mut(&mut message),
            headers::REPLY_TO,
            reply.as_str(),
        );
    }
    let acker = CoreAcker {
        inner: inner.clone(),
    };
    Some(adapter::delivery(
        message,
        topic.clone(),
        Box::new(acker),
        Some(1),
    ))
}

/// Publishes `reply` over core NATS to `subject` (at most once), within
/// the request timeout: handing it to the client waits for room in its
/// command channel, which a connection that takes nothing more never makes.
/// Its fields travel as its own reply subject when the request asked for
/// that and they fit ([`reply_fields`]), in the [`FIELDS`](crate::compact::FIELDS)
/// header otherwise.
pub(crate) async fn send_reply(
    inner: &Inner,
    subject: &str,
    reply: &Message,
    operation: &'static str,
) -> Result<()> {
    let sent = async {
        let (client, payload) = (&inner.client, reply.payload().clone());
        match reply_fields(subject, reply) {
            Some(fields) => {
                client
                    .publish_with_reply(subject.to_owned(), fields, payload)
                    .await
            }
            None => {
                client
                    .publish_with_headers(subject.to_owned(), encode(reply), payload)
                    .await
            }
        }
        .map_err(|e| op_error(operation, e))
    };
    inner.bounded(operation, sent).await
}

/// Settles a request that came over core NATS. Nothing stores it, so an
/// ack has nothing to confirm, and a request that is not handled (nacked,
/// or dropped in a shutdown) cannot come back: its requester is told at
/// once with an error reply instead of waiting for its timeout.
#[derive(Debug)]
struct CoreAcker {
    inner: Arc<Inner>,
}

impl CoreAcker {
    fn refusal(message: &Message, nack: &Nack) -> Message {
        let (kind, reason) = match nack {
            Nack::DeadLetter(reason) => (RemoteErrorKind::Permanent, reason.reason().to_owned()),
            _ => (
                RemoteErrorKind::Transient,
                "the responder stopped before handling the request".to_owned(),
            ),
        };
        headers::failure(message, kind, &reason)
    }

    async fn refuse(inner: &Inner, message: &Message, nack: &Nack) -> Result<()> {
        let Some(subject) = headers::reply_address(message) else {
            return Ok(());
        };
        let refusal = Self::refusal(message, nack);
        send_reply(inner, subject, &refusal, "refuse a request").await
    }
}

#[async_trait]
impl Acknowledger for CoreAcker {
    async fn ack(self: Box<Self>, _message: &Message) -> Result<()> {
        Ok(())
    }

    fn ack_at_once(&self, _message: &Message) -> bool {
        true
    }

    async fn nack(self: Box<Self>, message: &Message, nack: Nack) -> Result<()> {
        Self::refuse(&self.inner, message, &nack).await
    }

    fn abandon(self: Box<Self>, message: &Message) {
        let message = message.clone();
        let tasks = self.inner.tasks.clone();
        tasks.spawn("refuse a dropped request", async move {
            let _ = Self::refuse(&self.inner, &message, &Nack::Requeue).await;
        });
    }
}
