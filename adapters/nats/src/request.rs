//! Request/reply over core NATS: requests go to the topic's request
//! subject, where every subscription of the topic listens as a queue group
//! (one member per group answers); replies come back to the requester's
//! inbox. A request nobody listens for gets the server's no-responders
//! status.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_nats::{HeaderMap, RequestErrorKind, StatusCode};
use courier_core::adapter::{self, Acknowledger};
use courier_core::request::{
    self, PendingReplies, RemoteErrorKind, RequestError, Requester, headers,
};
use courier_core::{
    Delivery, DeliveryStream, Message, MessageId, Nack, Result, Subscription, async_trait,
};
use futures::StreamExt;
use tokio::sync::{OnceCell, mpsc};

use crate::error::op_error;
use crate::publisher::{NATS_MSG_ID, unquote};
use crate::{Inner, NatsBroker, consumer_name};

/// The core NATS subject the requests of `topic` go to. It is not a
/// subject of the topic's stream, so requests are not stored.
pub fn request_subject(topic: &str) -> String {
    format!("_courier.request.{topic}")
}

/// A connection's reply inbox: one core NATS subscription to
/// `<inbox>.*`, started on the connection's first request; each request
/// gets the reply subject `<inbox>.<request id>`.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    started: OnceCell<(String, Arc<PendingReplies>)>,
}

impl Inbox {
    async fn get(&self, inner: &Inner) -> Result<&(String, Arc<PendingReplies>)> {
        self.started
            .get_or_try_init(|| async {
                let prefix = inner.client.new_inbox();
                let mut replies = inner
                    .client
                    .subscribe(format!("{prefix}.*"))
                    .await
                    .map_err(|e| op_error("subscribe to the reply inbox", e))?;
                let pending = PendingReplies::new();
                let feed = pending.clone();
                let shutdown = inner.shutdown.clone();
                let id_start = prefix.len() + 1;
                tokio::spawn(async move {
                    loop {
                        let reply = tokio::select! {
                            () = shutdown.cancelled() => break,
                            reply = replies.next() => match reply {
                                Some(reply) => reply,
                                None => break,
                            },
                        };
                        if reply.status == Some(StatusCode::NO_RESPONDERS) {
                            if let Some(id) = reply.subject.get(id_start..) {
                                feed.refuse(id);
                            }
                            continue;
                        }
                        match decode(reply.headers.as_ref(), reply.payload) {
                            Ok(message) => {
                                feed.deliver(message);
                            }
                            Err(e) => tracing::warn!(error = %e, "undecodable reply dropped"),
                        }
                    }
                    feed.close_all();
                });
                Ok((prefix, pending))
            })
            .await
    }
}

/// The courier message NATS `headers` and `payload` carry.
pub(crate) fn decode(
    headers: Option<&HeaderMap>,
    payload: bytes::Bytes,
) -> std::result::Result<Message, courier_core::HeaderError> {
    adapter::wire::decode(wire_headers(headers), payload, None, MessageId::new)
}

/// The headers of a NATS message as courier's wire headers: `Nats-Msg-Id`
/// is the message id, other `Nats-` headers are the server's, values are
/// unquoted.
pub(crate) fn wire_headers(headers: Option<&HeaderMap>) -> impl Iterator<Item = (&str, &[u8])> {
    headers
        .into_iter()
        .flat_map(|h| h.iter())
        .map(|(name, values)| (<async_nats::HeaderName as AsRef<str>>::as_ref(name), values))
        .map(|(name, values)| match name {
            NATS_MSG_ID => (adapter::wire::ID, values),
            _ => (name, values),
        })
        .filter(|(name, _)| !name.starts_with("Nats-"))
        .filter_map(|(name, values)| {
            values
                .first()
                .map(|v| (name, unquote(v.as_str()).as_bytes()))
        })
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
    match inner
        .client
        .request(inner.client.new_inbox(), bytes::Bytes::new())
        .await
    {
        Ok(_) => Ok(requests),
        Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(requests),
        Err(e) => Err(op_error("subscribe to requests", e)),
    }
}

/// The delivery stream of a subscription: what its pull loop sends into
/// `pulled`, and the requests of `requests`, turned into deliveries as
/// they are polled (no task in between). It ends when the pull loop ends;
/// dropping it unsubscribes from the requests.
pub(crate) fn merge(
    inner: Arc<Inner>,
    topic: Arc<str>,
    mut pulled: mpsc::Receiver<Result<Delivery>>,
    requests: async_nats::Subscriber,
) -> DeliveryStream {
    let mut requests = Some(requests);
    Box::pin(futures::stream::poll_fn(move |cx| {
        match pulled.poll_recv(cx) {
            Poll::Ready(None) => {
                requests = None;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
            Poll::Pending => {}
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
    let mut message = match decode(request.headers.as_ref(), request.payload) {
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

/// Publishes `reply` over core NATS to `subject` (at most once).
async fn send_reply(
    inner: &Inner,
    subject: &str,
    reply: &Message,
    operation: &'static str,
) -> Result<()> {
    inner
        .client
        .publish_with_headers(
            subject.to_owned(),
            crate::publisher::headers(reply),
            reply.payload().clone(),
        )
        .await
        .map_err(|e| op_error(operation, e))
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

    async fn nack(self: Box<Self>, message: &Message, nack: Nack) -> Result<()> {
        Self::refuse(&self.inner, message, &nack).await
    }

    fn abandon(self: Box<Self>, message: &Message) {
        let message = message.clone();
        tokio::spawn(async move {
            let _ = Self::refuse(&self.inner, &message, &Nack::Requeue).await;
        });
    }
}

#[async_trait]
impl Requester for NatsBroker {
    /// Publishes the request over core NATS to the topic's request subject
    /// and waits for the reply on this connection's inbox. When no
    /// subscription of the topic runs, the server answers no-responders:
    /// [`RequestError::NoResponders`].
    async fn request(
        &self,
        topic: &str,
        message: Message,
        timeout: Duration,
    ) -> std::result::Result<Message, RequestError> {
        let inner = &self.inner;
        inner.check_open()?;
        courier_core::name::validate_topic(topic).map_err(courier_core::Error::from)?;
        let limit = inner.client.server_info().max_payload;
        adapter::check_payloads(std::slice::from_ref(&message), limit)?;
        let (inbox, pending) = inner.inbox.get(inner).await?;
        request::exchange(
            pending,
            topic,
            inbox,
            message,
            timeout,
            |request| async move {
                let id = request.header(headers::REQUEST_ID).unwrap_or_default();
                inner
                    .client
                    .publish_with_reply_and_headers(
                        request_subject(topic),
                        format!("{inbox}.{id}"),
                        crate::publisher::headers(&request),
                        request.payload().clone(),
                    )
                    .await
                    .map_err(|e| RequestError::Transport(op_error("request", e)))
            },
        )
        .await
    }

    /// Publishes the reply over core NATS to the request's reply subject:
    /// at most once.
    async fn reply(&self, request: &Message, reply: Message) -> Result<()> {
        let subject = headers::reply_address_of(crate::error::BROKER, request)?;
        self.inner.check_open()?;
        send_reply(&self.inner, subject, &reply, "reply").await
    }

    fn late_replies(&self) -> u64 {
        self.inner
            .inbox
            .started
            .get()
            .map_or(0, |(_, pending)| pending.late())
    }
}
