//! Settling JetStream deliveries, confirmed by the server.

use std::sync::Arc;

use async_nats::jetstream::AckKind;
use courier_core::adapter::Acknowledger;
use courier_core::{DeadLetter, Delivery, Error, Message, Nack, Result, async_trait};

use crate::connection::Inner;
use crate::error::op_error;
use crate::flow::Flow;

/// Settles one delivery through its reply subject.
#[derive(Debug)]
pub(crate) struct NatsAcker {
    pub(crate) inner: Arc<Inner>,
    pub(crate) flow: Arc<Flow>,
    /// The subject settling this delivery answers to.
    pub(crate) reply: async_nats::Subject,
    pub(crate) token: u64,
    pub(crate) topic: Arc<str>,
    pub(crate) group: Arc<str>,
}

/// Gives the delivery's place in its subscription's flow back, however
/// the acker ends: settled, abandoned, or dropped with a settlement's
/// future that a caller gave up on (a timeout around `ack`). Each acker
/// stands for one delivery counted in flight when it was made.
impl Drop for NatsAcker {
    fn drop(&mut self) {
        self.flow.release();
    }
}

/// A message pulled for a subscription and not yet taken from its
/// stream, with the number of connection losses when it was pulled
/// ([`Inner::connection_epoch`]) and the server it was pulled from.
///
/// One that the stream still holds when the client is connected to
/// another server than the one it came from (that server restarted, or
/// the client reconnected to another server of a cluster) is stale: it is
/// given back ([`Pulled::give_back`]) instead of handed out, and the pull
/// loop pulls again. A restarted server may have lost its consumer's
/// record of such deliveries (nats-server writes that record behind its
/// deliveries); it then answers no ack of theirs, and each ack of a held
/// backlog would wait out the request timeout in turn. A server that still
/// tracks them redelivers them at once on the NAK. Across a connection
/// loss to the same server (a network blip), the server still tracks them
/// and they are handed out as they are. Dropped unsent (the stream was
/// dropped), it is NAKed like any dropped delivery.
#[derive(Debug)]
pub(crate) struct Pulled {
    /// Both `Some` until the message is handed out or given back.
    parts: Option<(Message, NatsAcker)>,
    delivery_count: Option<u32>,
    epoch: u64,
    server: Arc<str>,
}

impl Pulled {
    pub(crate) fn new(
        message: Message,
        acker: NatsAcker,
        delivery_count: Option<u32>,
        server: Arc<str>,
    ) -> Self {
        let epoch = acker.inner.connection_epoch();
        Pulled {
            parts: Some((message, acker)),
            delivery_count,
            epoch,
            server,
        }
    }

    /// Whether the connection it was pulled on has been lost since: only
    /// then can the server have changed.
    pub(crate) fn outlived_its_connection(&self, inner: &Inner) -> bool {
        inner.connection_epoch() != self.epoch
    }

    /// The server it was pulled from.
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    /// The delivery handed out to the stream's reader.
    pub(crate) fn into_delivery(mut self) -> Delivery {
        let (message, acker) = self
            .parts
            .take()
            .expect("a pulled message is handed out once");
        let topic = acker.topic.clone();
        courier_core::adapter::delivery(message, topic, Box::new(acker), self.delivery_count)
    }

    /// Gives stale messages back, in order: one NAK each, sent without
    /// waiting for its answer (a server that lost track of a delivery gives
    /// none), and each delivery's place in the flow freed for the next
    /// pull. Sent in order, the NAKs let the server redeliver the messages
    /// in the order they were pulled.
    pub(crate) fn give_back(inner: &Inner, stale: Vec<Pulled>) {
        let replies: Vec<async_nats::Subject> = stale
            .into_iter()
            .filter_map(|mut pulled| {
                let (_, acker) = pulled.parts.take()?;
                inner.outstanding.lock().remove(&acker.token);
                Some(acker.reply.clone())
            })
            .collect();
        // Without a runtime, the server redelivers after `ack_wait`.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = inner.client.clone();
        let bound = inner.config.request_timeout;
        // Handing the NAKs to the client waits for room in its command
        // channel: bounded, as everything that waits on the connection.
        let naks = async move {
            let _ = tokio::time::timeout(bound, async {
                for reply in replies {
                    if client
                        .publish(reply, AckKind::Nak(None).into())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
            .await;
        };
        inner.tasks.spawn_on(
            "nak deliveries pulled before a connection loss",
            naks,
            &runtime,
        );
    }
}

impl Drop for Pulled {
    fn drop(&mut self) {
        if let Some((message, acker)) = self.parts.take() {
            Box::new(acker).abandon(&message);
        }
    }
}

impl NatsAcker {
    /// Sends `kind` and waits for the server's confirmation. A delivery the
    /// connection already NAKed while closing cannot be settled again.
    async fn settle(&self, kind: AckKind, operation: &'static str) -> Result<()> {
        let claimed = self.inner.outstanding.lock().remove(&self.token).is_some();
        let outcome = if claimed {
            // A request: the server answers once it has recorded the
            // settlement (what `double_ack` does, over the client's shared
            // reply subscription instead of a new one per message).
            // Across a lost connection the answer cannot come: fail at
            // once rather than stall the consumer for the request timeout.
            let confirmed = async {
                self.inner
                    .client
                    .request(self.reply.clone(), kind.into())
                    .await
                    .map(drop)
                    .map_err(|e| op_error(operation, e))
            };
            // Bounded as a whole: handing the request to the client waits
            // for room in its command channel, which a connection that
            // takes nothing more never makes. The bound also turns the
            // client's own timeout of the request into `Error::Timeout`.
            self.inner
                .bounded(
                    operation,
                    self.inner.unless_disconnected(operation, confirmed),
                )
                .await
        } else {
            Err(Error::Closed(
                "nats connection (the delivery was returned on close)",
            ))
        };
        // The delivery's place in the flow is given back when this acker
        // is dropped, right after.
        outcome
    }
}

impl NatsAcker {
    /// Dead-letters a message courier cannot decode, delivered for the
    /// `deliveries`-th time: on success the original is terminated; when
    /// the copy is refused, the original is NAKed with the dead-letter
    /// backoff for that many failures, so its next delivery (and the next
    /// try) comes after a growing delay instead of at once.
    pub(crate) async fn dead_letter_foreign(self, raw: Message, reason: String, deliveries: u32) {
        match self.publish_copy(&raw, &DeadLetter::new(reason)).await {
            Ok(()) => {
                let _ = self.settle(AckKind::Term, "term").await;
            }
            Err(error) => {
                let delay = courier_core::adapter::dead_letter_retry_delay(deliveries);
                tracing::warn!(
                    topic = %self.topic, id = %raw.id(), deliveries, ?delay, %error,
                    "publishing the dead-letter copy of a foreign message failed; it comes back after the delay"
                );
                let _ = self.settle(AckKind::Nak(Some(delay)), "nak").await;
            }
        }
    }

    /// Publishes the dead-letter copy; the original stays unsettled.
    async fn publish_copy(&self, message: &Message, dead_letter: &DeadLetter) -> Result<()> {
        let (topic, copy) = dead_letter.to_message(message, &self.topic, &self.group)?;
        crate::publisher::publish(&self.inner, &topic, vec![copy]).await
    }
}

#[async_trait]
impl Acknowledger for NatsAcker {
    async fn ack(self: Box<Self>, _message: &Message) -> Result<()> {
        self.settle(AckKind::Ack, "ack").await
    }

    async fn nack(self: Box<Self>, message: &Message, nack: Nack) -> Result<()> {
        match nack {
            Nack::RequeueAfter(delay) => self.settle(AckKind::Nak(Some(delay)), "nak").await,
            Nack::DeadLetter(dead_letter) => {
                match self.publish_copy(message, &dead_letter).await {
                    Ok(()) => self.settle(AckKind::Term, "term").await,
                    Err(e) => {
                        // The original stays and comes back.
                        let _ = self.settle(AckKind::Nak(None), "nak").await;
                        Err(e)
                    }
                }
            }
            _ => self.settle(AckKind::Nak(None), "nak").await,
        }
    }

    async fn publish_dead_letter(
        &self,
        message: &Message,
        dead_letter: &DeadLetter,
    ) -> Option<Result<()>> {
        if !self.inner.outstanding.lock().contains_key(&self.token) {
            // Returned on close: the server delivers the message again.
            return None;
        }
        let copied = self.publish_copy(message, dead_letter).await;
        if copied.is_err() {
            // The original is held while the copy is tried again: restart
            // its ack wait so the server does not deliver it meanwhile.
            let progress = async {
                self.inner
                    .client
                    .publish(self.reply.clone(), AckKind::Progress.into())
                    .await
                    .map_err(|e| op_error("progress", e))
            };
            let _ = self.inner.bounded("progress", progress).await;
        }
        Some(copied)
    }

    async fn settle_dead_lettered(self: Box<Self>, _message: &Message) -> Result<()> {
        self.settle(AckKind::Term, "term").await
    }

    fn abandon(self: Box<Self>, _message: &Message) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let tasks = self.inner.tasks.clone();
                let nak = async move {
                    let _ = self.settle(AckKind::Nak(None), "nak").await;
                };
                tasks.spawn_on("nak a dropped delivery", nak, &runtime);
            }
            // No runtime to send from: the server redelivers after ack_wait.
            Err(_) => {
                self.inner.outstanding.lock().remove(&self.token);
            }
        }
    }
}
