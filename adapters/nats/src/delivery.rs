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

/// Where a pull was sent: the connection epoch
/// ([`Inner::connection_epoch`]) and the id of the server the client was
/// connected to. Read before the pull is sent, so that a message it brings
/// is never credited to a later connection than its own: at worst to an
/// earlier one, which costs an unneeded give-back, never a stale message
/// handed out.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    epoch: u64,
    server: Arc<str>,
    /// The server id was read while connected: it is the epoch's own.
    settled: bool,
}

impl Origin {
    pub(crate) fn read(inner: &Inner) -> Self {
        let epoch = inner.connection_epoch();
        let settled = inner.is_connected();
        Origin {
            epoch,
            server: inner.server_id(),
            settled,
        }
    }

    /// This origin again while the connection is the same and its server
    /// id was read while connected: reading the id clones the server's
    /// `INFO`, which is not for every pull.
    pub(crate) fn refresh(&mut self, inner: &Inner) {
        if !self.settled || inner.connection_epoch() != self.epoch {
            *self = Origin::read(inner);
        }
    }
}

/// A message pulled for a subscription and not yet taken from its
/// stream, with where it was pulled ([`Origin`]).
///
/// One that the stream still holds when its connection has been lost and
/// the client is not connected again to the same server (that server
/// restarted, the client reconnected to another server of a cluster, or it
/// is still reconnecting) is stale: it is given back ([`Pulled::give_back`])
/// instead of handed out, and the pull loop pulls again. A restarted server
/// may have lost its consumer's record of such deliveries (nats-server
/// writes that record behind its deliveries); it then answers no ack of
/// theirs, and each ack of a held backlog would wait out the request
/// timeout in turn. A server that still tracks them redelivers them at
/// once on the NAK. Once reconnected to the same server (a network blip),
/// they are handed out as they are: that server still tracks them. Dropped
/// unsent (the stream was dropped), it is NAKed like any dropped delivery.
#[derive(Debug)]
pub(crate) struct Pulled {
    /// Both `Some` until the message is handed out or given back.
    parts: Option<(Message, NatsAcker)>,
    delivery_count: Option<u32>,
    origin: Origin,
}

impl Pulled {
    pub(crate) fn new(
        message: Message,
        acker: NatsAcker,
        delivery_count: Option<u32>,
        origin: Origin,
    ) -> Self {
        Pulled {
            parts: Some((message, acker)),
            delivery_count,
            origin,
        }
    }

    /// Whether it is stale now: its connection was lost since, and the
    /// client is not connected again to the same server (it is
    /// reconnecting, or connected to another one). `server_now` holds the
    /// current server's id, read at most once.
    pub(crate) fn is_stale(&self, inner: &Inner, server_now: &mut Option<Arc<str>>) -> bool {
        let origin = &self.origin;
        inner.connection_epoch() != origin.epoch
            && (!inner.is_connected()
                || *server_now.get_or_insert_with(|| inner.server_id()) != origin.server)
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

    /// Gives stale messages back: one NAK each, sent without waiting for
    /// its answer (a server that lost track of a delivery gives none). The
    /// NAKs go out after those of `before` (the previous give-back of the
    /// same subscription), in the order the messages were pulled, so the
    /// server redelivers them in that order; and only then are the
    /// deliveries' places in the flow freed, so that the next pull, which
    /// they make room for, reaches the server after them. A message whose
    /// delivery `close` already NAKed is not NAKed again. Returns what the
    /// next give-back waits for.
    pub(crate) fn give_back(
        inner: &Inner,
        stale: Vec<Pulled>,
        before: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let ackers: Vec<NatsAcker> = stale
            .into_iter()
            .filter_map(|mut pulled| pulled.parts.take().map(|(_, acker)| acker))
            .collect();
        // Without a runtime, the server redelivers after `ack_wait`.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            for acker in &ackers {
                inner.outstanding.lock().remove(&acker.token);
            }
            return None;
        };
        let (done, next) = tokio::sync::oneshot::channel();
        let bound = inner.config.request_timeout;
        // Handing the NAKs to the client waits for room in its command
        // channel: bounded, as everything that waits on the connection.
        let naks = async move {
            let _ = tokio::time::timeout(bound, async {
                if let Some(before) = before {
                    let _ = before.await;
                }
                for acker in &ackers {
                    let claimed = acker.inner.outstanding.lock().remove(&acker.token);
                    if claimed.is_none() {
                        continue;
                    }
                    let nak = AckKind::Nak(None).into();
                    if acker
                        .inner
                        .client
                        .publish(acker.reply.clone(), nak)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
            .await;
            // The places in the flow come back here, after the NAKs.
            drop(ackers);
            let _ = done.send(());
        };
        inner.tasks.spawn_on(
            "nak deliveries pulled from a server no longer connected to",
            naks,
            &runtime,
        );
        Some(next)
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
