//! What a handler sees of the message it handles: the body and its context.

use std::sync::Arc;
use std::time::SystemTime;

use crate::headers::Headers;
use crate::message::{Message, MessageId};

use super::request::Request;

/// A message's body together with its context, owned by the handler.
///
/// Typed handlers built with [`envelope`](super::envelope) receive an
/// `Envelope<T>` whose body is the JSON payload decoded into `T`; raw ones
/// built with [`raw_envelope`](super::raw_envelope) receive an
/// `Envelope<Bytes>`. Both fields are public, so a handler can take the
/// envelope apart: `|Envelope { body, meta }| async move { .. }`.
///
/// # Examples
///
/// A handler that reads a header and publishes a follow-up in the same flow:
///
/// ```
/// use courier_core::runtime::{self, Envelope};
/// use courier_core::{Broker, Message};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderPlaced { order: u64 }
/// #[derive(serde::Serialize)]
/// struct InvoiceRequested { order: u64, tenant: String }
///
/// fn billing(broker: Broker) -> impl runtime::Handler {
///     runtime::envelope(move |Envelope { body, meta }: Envelope<OrderPlaced>| {
///         let broker = broker.clone();
///         async move {
///             let tenant = meta.header("tenant").unwrap_or("default").to_owned();
///             let next = meta.follow_up(Message::from_json(&InvoiceRequested { order: body.order, tenant })?);
///             // Same correlation id as the order; causation id = the order's message id.
///             broker.publish("invoices.requested", next).await?;
///             Ok(())
///         }
///     })
/// }
/// # let _ = billing;
/// ```
#[derive(Debug, Clone)]
pub struct Envelope<T> {
    /// The decoded body.
    pub body: T,
    /// Everything else: ids, key, headers, where it came from, which attempt.
    pub meta: Meta,
}

impl<T> Envelope<T> {
    /// An envelope of `body` with `meta`; for testing handlers.
    pub fn new(body: T, meta: Meta) -> Self {
        Envelope { body, meta }
    }

    /// The envelope with its body changed by `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Envelope<U> {
        Envelope {
            body: f(self.body),
            meta: self.meta,
        }
    }
}

/// The context of one handler attempt: the message's metadata, the topic
/// and group it was consumed through, the attempt number and the broker's
/// delivery count. Owned, so a handler may keep it across awaits.
#[derive(Debug, Clone)]
pub struct Meta {
    message: Message,
    topic: Arc<str>,
    group: Arc<str>,
    attempt: u32,
    delivery_count: Option<u32>,
}

impl Meta {
    /// The context of `message` consumed from `topic` by `group`, first
    /// attempt, delivery count unknown; for testing handlers.
    pub fn new(message: Message, topic: &str, group: &str) -> Self {
        Meta {
            message,
            topic: topic.into(),
            group: group.into(),
            attempt: 1,
            delivery_count: None,
        }
    }

    /// Sets the attempt number; for testing handlers.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The whole message as delivered, payload included.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message id.
    pub fn id(&self) -> &MessageId {
        self.message.id()
    }

    /// The ordering key.
    pub fn key(&self) -> Option<&str> {
        self.message.key()
    }

    /// The headers, courier's reserved ones included.
    pub fn headers(&self) -> &Headers {
        self.message.headers()
    }

    /// One header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.message.header(name)
    }

    /// The content type.
    pub fn content_type(&self) -> Option<&str> {
        self.message.content_type()
    }

    /// When the message was created, to the millisecond.
    pub fn timestamp(&self) -> SystemTime {
        self.message.timestamp()
    }

    /// The correlation id: shared by every message of one flow.
    pub fn correlation_id(&self) -> Option<&str> {
        self.message.correlation_id()
    }

    /// The causation id: the id of the message that caused this one.
    pub fn causation_id(&self) -> Option<&str> {
        self.message.causation_id()
    }

    /// The topic the message was consumed from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Which attempt this is within the current delivery, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many times the broker has delivered the message, this time
    /// included, when it tells; see [`Delivery::delivery_count`](crate::Delivery::delivery_count).
    pub fn delivery_count(&self) -> Option<u32> {
        self.delivery_count
    }

    /// `next` as a message caused by this one: its causation id becomes
    /// this message's id and the correlation id is carried over (or starts
    /// at this message's id), so the whole flow shares one correlation id.
    /// See [`Message::caused_by`].
    pub fn follow_up(&self, next: Message) -> Message {
        next.caused_by(&self.message)
    }
}

/// The owned context of a handler attempt, as typed handlers receive it.
impl From<&Request<'_>> for Meta {
    fn from(request: &Request<'_>) -> Self {
        let (topic, group) = request.shared_names();
        Meta {
            message: request.message().clone(),
            topic,
            group,
            attempt: request.attempt(),
            delivery_count: request.delivery_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_of_a_runtime_request_shares_its_names() {
        let message = Message::new("m");
        let (topic, group): (Arc<str>, Arc<str>) = ("orders".into(), "billing".into());
        let meta = Meta::from(&Request::shared(&message, &topic, &group));
        assert!(Arc::ptr_eq(&meta.topic, &topic));
        assert!(Arc::ptr_eq(&meta.group, &group));
        // A request built by hand (a test of a handler) gets its own copies.
        let meta = Meta::from(&Request::new(&message, "orders", "billing"));
        assert_eq!((meta.topic(), meta.group()), ("orders", "billing"));
        assert!(!Arc::ptr_eq(&meta.topic, &topic));
    }
}
