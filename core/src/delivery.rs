//! A received message and how it is settled.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::error::Result;
use crate::headers::HeaderError;
use crate::message::Message;

/// Header naming why a message was dead-lettered.
pub const DLQ_REASON: &str = "courier-dlq-reason";
/// Header naming the topic a dead-lettered message was consumed from.
pub const DLQ_ORIGINAL_TOPIC: &str = "courier-dlq-original-topic";
/// Header naming the consumer group that gave up on the message.
pub const DLQ_GROUP: &str = "courier-dlq-group";
/// Header with the number of handling attempts made.
pub const DLQ_ATTEMPTS: &str = "courier-dlq-attempts";
/// Header with the first failure time, milliseconds since the Unix epoch.
pub const DLQ_FIRST_FAILURE: &str = "courier-dlq-first-failure-ms";
/// Header with the last failure time, milliseconds since the Unix epoch.
pub const DLQ_LAST_FAILURE: &str = "courier-dlq-last-failure-ms";

/// The dead-letter topic for `topic` unless configured otherwise: `<topic>.dlq`.
pub fn default_dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// What a negative acknowledgement asks of the broker.
///
/// Whatever the broker, a nacked message comes back (or moves to the
/// dead-letter topic); it is never silently skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Nack {
    /// Deliver it again as soon as possible.
    Requeue,
    /// Deliver it again after at least this delay.
    RequeueAfter(Duration),
    /// Give up: publish it to the dead-letter topic, then remove it.
    DeadLetter(DeadLetter),
}

impl Nack {
    /// [`Nack::DeadLetter`] to the default topic with a reason.
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Nack::DeadLetter(DeadLetter::new(reason))
    }
}

/// Where and why a message is dead-lettered.
///
/// The dead-letter copy keeps the original id, key, payload, content type,
/// timestamp and headers, and gains [`DLQ_REASON`], [`DLQ_ORIGINAL_TOPIC`] and
/// [`DLQ_GROUP`] plus any details added with [`DeadLetter::with_detail`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    topic: Option<String>,
    reason: String,
    details: Vec<(&'static str, String)>,
}

impl DeadLetter {
    /// Dead-letter to `<topic>.dlq` with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        DeadLetter {
            topic: None,
            reason: reason.into(),
            details: Vec::new(),
        }
    }

    /// Dead-letter to this topic instead of `<topic>.dlq`.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Adds a reserved header (one of the `DLQ_*` constants) to the copy.
    pub fn with_detail(mut self, header: &'static str, value: impl Into<String>) -> Self {
        self.details.push((header, value.into()));
        self
    }

    /// Adds [`DLQ_ATTEMPTS`], [`DLQ_FIRST_FAILURE`] and [`DLQ_LAST_FAILURE`].
    pub fn with_attempts(
        self,
        attempts: u32,
        first_failure: SystemTime,
        last_failure: SystemTime,
    ) -> Self {
        self.with_detail(DLQ_ATTEMPTS, attempts.to_string())
            .with_detail(DLQ_FIRST_FAILURE, millis(first_failure).to_string())
            .with_detail(DLQ_LAST_FAILURE, millis(last_failure).to_string())
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The dead-letter topic and the copy to publish there, for a message
    /// consumed from `topic` by `group`. Adapters call this, publish the copy
    /// with their own confirmed publish, then remove the original.
    ///
    /// # Errors
    ///
    /// [`HeaderError`] if the added headers would exceed the header limits
    /// (a very long reason is cut to 4 KiB first, so in practice only a
    /// message already at the limit fails).
    pub fn to_message(
        &self,
        original: &Message,
        topic: &str,
        group: &str,
    ) -> Result<(String, Message), HeaderError> {
        let dlq_topic = self
            .topic
            .clone()
            .unwrap_or_else(|| default_dead_letter_topic(topic));
        let mut copy = original.clone();
        let headers = copy.headers_mut();
        let reason = one_line(&self.reason, 4096);
        headers.insert_own(DLQ_REASON, reason)?;
        headers.insert_own(DLQ_ORIGINAL_TOPIC, topic)?;
        headers.insert_own(DLQ_GROUP, group)?;
        for (name, value) in &self.details {
            headers.insert_reserved(*name, one_line(value, 4096))?;
        }
        Ok((dlq_topic, copy))
    }
}

fn millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// `text` on one line (line breaks become spaces), cut to at most `max` bytes
/// on a character boundary.
fn one_line(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].replace(['\r', '\n'], " ")
}

/// How an adapter settles one delivery. Implemented by adapters (see
/// [`adapter`](crate::adapter)); applications use [`Delivery::ack`] and
/// [`Delivery::nack`].
#[async_trait]
pub trait Acknowledger: Send + Sync + fmt::Debug {
    /// Records that the message was handled. Returns once the broker has
    /// recorded it.
    async fn ack(self: Box<Self>, message: &Message) -> Result<()>;

    /// Records that the message was not handled; see [`Nack`].
    async fn nack(self: Box<Self>, message: &Message, nack: Nack) -> Result<()>;

    /// The delivery was dropped without being settled: make the message come
    /// back, as a [`Nack::Requeue`] would. Must not block; may spawn.
    fn abandon(self: Box<Self>, message: &Message);

    /// Publishes the dead-letter copy of `message` (as
    /// [`Nack::DeadLetter`] would) and leaves the delivery unsettled, so
    /// that a publish that failed can be tried again while the broker keeps
    /// the original for this consumer; [`Acknowledger::settle_dead_lettered`]
    /// then removes the original. `None` (the default): the adapter cannot
    /// publish the copy and keep the delivery (it dead-letters only through
    /// [`Acknowledger::nack`], or the delivery can no longer be settled
    /// because the broker took the message back), so the caller falls back
    /// to [`Nack::DeadLetter`].
    async fn publish_dead_letter(
        &self,
        _message: &Message,
        _dead_letter: &DeadLetter,
    ) -> Option<Result<()>> {
        None
    }

    /// Removes the original after [`Acknowledger::publish_dead_letter`]
    /// published its copy. Default: [`Acknowledger::ack`].
    async fn settle_dead_lettered(self: Box<Self>, message: &Message) -> Result<()> {
        self.ack(message).await
    }

    /// Acks here and now when acking waits for nothing and cannot fail
    /// (local bookkeeping, or nothing to send): returns `true`, and the
    /// caller drops the acknowledger instead of calling
    /// [`Acknowledger::ack`]. `false` (the default): nothing happened; the
    /// caller calls `ack`. Such an ack then costs no future. Called at most
    /// once; after `true`, no other method is called.
    fn ack_at_once(&self, _message: &Message) -> bool {
        false
    }

    /// The partition the message was read from, on brokers with
    /// partitions (Kafka); for spans.
    fn partition(&self) -> Option<i32> {
        None
    }

    /// The message's offset in its partition (Kafka); for spans.
    fn offset(&self) -> Option<i64> {
        None
    }
}

/// A message received from a subscription, to be settled exactly once.
///
/// Settling consumes the delivery, so a double ack does not compile. A
/// delivery dropped without being settled comes back (as after
/// [`Nack::Requeue`]).
pub struct Delivery {
    message: Message,
    topic: Arc<str>,
    delivery_count: Option<u32>,
    acker: Option<Box<dyn Acknowledger>>,
}

impl Delivery {
    /// A delivery; adapters make one with [`adapter::delivery`](crate::adapter::delivery).
    pub(crate) fn new(
        message: Message,
        topic: Arc<str>,
        acker: Box<dyn Acknowledger>,
        delivery_count: Option<u32>,
    ) -> Self {
        Delivery {
            message,
            topic,
            delivery_count,
            acker: Some(acker),
        }
    }

    /// The message.
    #[inline]
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The topic it was consumed from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// How many times the message has been delivered, this time included,
    /// when the broker tells (memory, Kafka within a session, JetStream,
    /// RabbitMQ quorum queues). `None` when it does not.
    pub fn delivery_count(&self) -> Option<u32> {
        self.delivery_count
    }

    /// The partition the message was read from, on brokers with partitions
    /// (Kafka); `None` elsewhere.
    pub fn partition(&self) -> Option<i32> {
        self.acker.as_ref().and_then(|acker| acker.partition())
    }

    /// The message's offset in its partition (Kafka); `None` elsewhere.
    pub fn offset(&self) -> Option<i64> {
        self.acker.as_ref().and_then(|acker| acker.offset())
    }

    /// Whether the broker has delivered this message before, as far as it knows.
    pub fn redelivered(&self) -> bool {
        self.delivery_count.is_some_and(|c| c > 1)
    }

    /// Acknowledges: the message is done and should not come back.
    ///
    /// What `Ok` promises depends on the broker, and each adapter documents
    /// it; no adapter promises more than this:
    ///
    /// | adapter | `Ok` from `ack` means |
    /// |---------|-----------------------|
    /// | memory  | removed from the group's queue |
    /// | NATS JetStream | the server confirmed the ack (double ack) |
    /// | RabbitMQ | `basic.ack` was sent on the live channel (AMQP 0-9-1 has no reply to an ack) |
    /// | Kafka   | the offset is settled locally; the group commits it with the next commit (at most 100 ms later, and on revoke and close) |
    ///
    /// So an acked message can still come back after a crash or a lost
    /// connection (at-least-once delivery): handlers tolerate duplicates, or
    /// use the idempotency store.
    ///
    /// # Errors
    ///
    /// The broker could not record the ack (the message may then come back).
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before it completes, the ack may or may not
    /// have reached the broker; at worst the message is delivered again.
    pub async fn ack(mut self) -> Result<()> {
        if self.ack_at_once() {
            return Ok(());
        }
        let acker = self.acker.take().expect("a delivery is settled only once");
        acker.ack(&self.message).await
    }

    /// Whether the adapter acked without waiting
    /// ([`Acknowledger::ack_at_once`]); the delivery is then settled.
    /// `false`: acking waits, and the delivery is not settled yet.
    #[inline]
    pub(crate) fn ack_at_once(&mut self) -> bool {
        let acker = self
            .acker
            .as_ref()
            .expect("a delivery is settled only once");
        let acked = acker.ack_at_once(&self.message);
        if acked {
            self.acker = None;
        }
        acked
    }

    /// [`Delivery::ack`] without giving up the delivery, for the consumer
    /// runtime: the future borrows the delivery instead of holding it (a
    /// box, where `ack`'s future holds the whole delivery, twice over).
    pub(crate) fn ack_in_place(&mut self) -> futures::future::BoxFuture<'_, Result<()>> {
        let acker = self.acker.take().expect("a delivery is settled only once");
        acker.ack(&self.message)
    }

    /// Negatively acknowledges; see [`Nack`].
    ///
    /// # Errors
    ///
    /// The broker could not record the nack, or publishing the dead-letter
    /// copy failed (the original then stays and comes back).
    ///
    /// # Cancel safety
    ///
    /// As for [`Delivery::ack`]: at worst the message comes back.
    pub async fn nack(mut self, nack: Nack) -> Result<()> {
        let acker = self.acker.take().expect("a delivery is settled only once");
        acker.nack(&self.message, nack).await
    }

    /// Publishes the dead-letter copy and keeps the delivery; see
    /// [`Acknowledger::publish_dead_letter`].
    pub(crate) async fn publish_dead_letter(&self, dead_letter: &DeadLetter) -> Option<Result<()>> {
        let acker = self
            .acker
            .as_ref()
            .expect("a delivery is settled only once");
        acker.publish_dead_letter(&self.message, dead_letter).await
    }

    /// Removes the original after [`Delivery::publish_dead_letter`].
    pub(crate) async fn settle_dead_lettered(mut self) -> Result<()> {
        let acker = self.acker.take().expect("a delivery is settled only once");
        acker.settle_dead_lettered(&self.message).await
    }

    /// Takes the message out, settling nothing: the delivery is abandoned
    /// and the message will come back. Mostly useful in tests.
    pub fn into_message(mut self) -> Message {
        if let Some(acker) = self.acker.take() {
            acker.abandon(&self.message);
        }
        std::mem::replace(&mut self.message, Message::new(bytes::Bytes::new()))
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            acker.abandon(&self.message);
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("delivery_count", &self.delivery_count)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_copy_keeps_the_message_and_adds_details() {
        let original = Message::new("p")
            .with_key("k")
            .with_header("a", "b")
            .unwrap();
        let dl = DeadLetter::new("boom\nline two").with_attempts(
            3,
            UNIX_EPOCH + Duration::from_millis(5),
            UNIX_EPOCH + Duration::from_millis(9),
        );
        let (topic, copy) = dl.to_message(&original, "orders", "billing").unwrap();
        assert_eq!(topic, "orders.dlq");
        assert_eq!(copy.id(), original.id());
        assert_eq!(copy.key(), Some("k"));
        assert_eq!(copy.header("a"), Some("b"));
        assert_eq!(copy.header(DLQ_REASON), Some("boom line two"));
        assert_eq!(copy.header(DLQ_ORIGINAL_TOPIC), Some("orders"));
        assert_eq!(copy.header(DLQ_GROUP), Some("billing"));
        assert_eq!(copy.header(DLQ_ATTEMPTS), Some("3"));
        assert_eq!(copy.header(DLQ_FIRST_FAILURE), Some("5"));
        assert_eq!(copy.header(DLQ_LAST_FAILURE), Some("9"));
        let (topic, _) = DeadLetter::new("x")
            .with_topic("parking-lot")
            .to_message(&original, "orders", "g")
            .unwrap();
        assert_eq!(topic, "parking-lot");
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let reason = "é".repeat(3000);
        let (_, copy) = DeadLetter::new(reason)
            .to_message(&Message::new(""), "t", "g")
            .unwrap();
        assert_eq!(copy.header(DLQ_REASON).unwrap().len(), 4096);
    }
}
