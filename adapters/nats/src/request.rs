//! Request/reply: requests go through JetStream like any message (so an
//! ordinary consumer answers them), replies come back over core NATS to
//! the requester's inbox subject.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use courier_core::request::{self, PendingReplies, RequestError, Requester, headers};
use courier_core::{Message, MessageId, Result, adapter, async_trait};
use futures::StreamExt;
use tokio::sync::OnceCell;

use crate::error::op_error;
use crate::publisher::{NATS_MSG_ID, publish_error, unquote};
use crate::{Inner, NatsBroker};

/// A connection's reply inbox: one core NATS subscription, started on the
/// connection's first request, feeding every reply to [`PendingReplies`].
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    started: OnceCell<(String, Arc<PendingReplies>)>,
}

impl Inbox {
    async fn get(&self, inner: &Inner) -> Result<&(String, Arc<PendingReplies>)> {
        self.started
            .get_or_try_init(|| async {
                let subject = inner.client.new_inbox();
                let mut replies = inner
                    .client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| op_error("subscribe to the reply inbox", e))?;
                let pending = PendingReplies::new();
                let feed = pending.clone();
                let shutdown = inner.shutdown.clone();
                tokio::spawn(async move {
                    loop {
                        let reply = tokio::select! {
                            () = shutdown.cancelled() => break,
                            reply = replies.next() => match reply {
                                Some(reply) => reply,
                                None => break,
                            },
                        };
                        match decode(reply.headers.as_ref(), reply.payload) {
                            Ok(message) => {
                                feed.deliver(message);
                            }
                            Err(e) => tracing::warn!(error = %e, "undecodable reply dropped"),
                        }
                    }
                    feed.close_all();
                });
                Ok((subject, pending))
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
        .filter_map(|(name, values)| values.first().map(|v| (name, unquote(v.as_str()).as_bytes())))
}

#[async_trait]
impl Requester for NatsBroker {
    /// Publishes the request to the topic's stream (waiting for its ack)
    /// and waits for the reply on this connection's inbox. A topic no
    /// stream holds is [`RequestError::NoResponders`].
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
        request::exchange(pending, inbox, message, timeout, |request| async move {
            let size = request.payload().len();
            let sent = inner
                .js
                .publish_with_headers(
                    topic.to_owned(),
                    crate::publisher::headers(&request),
                    request.payload().clone(),
                )
                .await;
            let acked = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            acked.map(drop).map_err(|e| match e.kind() {
                PublishErrorKind::StreamNotFound => RequestError::NoResponders {
                    topic: topic.to_owned(),
                },
                _ => RequestError::Transport(publish_error(inner, e, size)),
            })
        })
        .await
    }

    /// Publishes the reply over core NATS to the requester's inbox: at most
    /// once.
    async fn reply(&self, request: &Message, reply: Message) -> Result<()> {
        let subject = headers::reply_address_of(crate::error::BROKER, request)?;
        self.inner.check_open()?;
        self.inner
            .client
            .publish_with_headers(
                subject.to_owned(),
                crate::publisher::headers(&reply),
                reply.payload().clone(),
            )
            .await
            .map_err(|e| op_error("reply", e))
    }

    fn late_replies(&self) -> u64 {
        self.inner
            .inbox
            .started
            .get()
            .map_or(0, |(_, pending)| pending.late())
    }
}
