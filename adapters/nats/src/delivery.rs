//! Settling JetStream deliveries, confirmed by the server.

use std::sync::Arc;

use async_nats::jetstream::AckKind;
use courier_core::adapter::Acknowledger;
use courier_core::{DeadLetter, Error, Message, Nack, Result, async_trait};

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
