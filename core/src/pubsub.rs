//! The two traits every adapter implements, and [`Broker`], which holds one
//! of each.

use std::fmt;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Stream;

use crate::delivery::Delivery;
use crate::error::Result;
use crate::message::Message;
use crate::telemetry::health::Health;
use crate::telemetry::lag::{DEFAULT_LAG_TIMEOUT, Lag};

/// Releases a connection: the one method publishers and subscribers share,
/// so `close()` is never ambiguous when both traits are in scope.
#[async_trait]
pub trait Close: Send + Sync + fmt::Debug {
    /// Flushes what is pending and releases the connection. Idempotent:
    /// closing twice is `Ok`. Publishing or subscribing afterwards fails
    /// with [`Error::Closed`](crate::Error::Closed); streams end.
    /// Deliveries already handed out can still be settled where the broker
    /// allows; unsettled ones come back.
    ///
    /// # Errors
    ///
    /// Pending work could not be flushed, or the connection could not be
    /// closed cleanly.
    async fn close(&self) -> Result<()>;

    /// Whether the connection is usable now, from what the client knows
    /// (no round trip to the broker): for readiness probes. See
    /// [`Health`]. [`Health::Unknown`] unless the adapter says.
    fn health(&self) -> Health {
        Health::Unknown
    }
}

/// Publishes messages to topics.
///
/// `Ok` means the broker has taken responsibility for the message: a
/// publisher confirm (RabbitMQ), a JetStream ack, a Kafka delivery report, or
/// the message sitting in the in-memory broker's queues. Nothing less.
#[async_trait]
pub trait Publisher: Close {
    /// Publishes one message and waits for the broker's confirmation.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName) for a topic name no
    /// broker could carry, [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge),
    /// [`Error::Closed`](crate::Error::Closed) after `close`, and broker
    /// failures ([`Error::is_retryable`](crate::Error::is_retryable) tells
    /// whether to try again).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes leaves it unknown whether the
    /// broker stored the message: publish again (ids let consumers dedupe).
    async fn publish(&self, topic: &str, message: Message) -> Result<()>;

    /// Publishes several messages, pipelining the broker's confirmations, and
    /// returns when all are confirmed. Messages keep their order per key.
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`]. On error some messages of the batch may
    /// have been stored; publishing the whole batch again is safe for
    /// consumers that deduplicate by id.
    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        for message in messages {
            self.publish(topic, message).await?;
        }
        Ok(())
    }
}

/// Where a consumer group starts when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartPosition {
    /// Only messages published after the group was created (provisioned or
    /// first subscribed).
    #[default]
    Latest,
    /// Also the messages the broker still keeps from before (memory, Kafka,
    /// JetStream keep history; RabbitMQ does not, so this equals `Latest` there).
    Earliest,
}

/// What to consume: a topic, a consumer group, where a new group starts, and
/// how many unsettled deliveries a stream may hold at once.
///
/// Subscriptions with the same group compete for messages (each message goes
/// to one of them); different groups each receive every message.
///
/// # Examples
///
/// ```
/// use courier_core::{StartPosition, Subscription};
/// let sub = Subscription::new("orders", "billing")
///     .start_from(StartPosition::Earliest)
///     .prefetch(64);
/// assert_eq!(sub.prefetch_count(), 64);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    topic: String,
    group: String,
    start: StartPosition,
    prefetch: NonZeroU16,
}

/// Default [`Subscription::prefetch`].
pub const DEFAULT_PREFETCH: u16 = 256;

impl Subscription {
    /// A subscription of `group` to `topic`, starting at
    /// [`StartPosition::Latest`], with a prefetch of [`DEFAULT_PREFETCH`].
    /// Names are checked when subscribing.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Subscription {
            topic: topic.into(),
            group: group.into(),
            start: StartPosition::Latest,
            prefetch: NonZeroU16::new(DEFAULT_PREFETCH).expect("non-zero"),
        }
    }

    /// Where the group starts if this subscription creates it.
    pub fn start_from(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// At most this many deliveries of the stream are unsettled at once
    /// (0 counts as 1). With 1, the next message is not delivered until the
    /// current one is settled.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = NonZeroU16::new(prefetch).unwrap_or(NonZeroU16::MIN);
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Where a new group starts.
    pub fn start_position(&self) -> StartPosition {
        self.start
    }

    /// The prefetch limit.
    pub fn prefetch_count(&self) -> u16 {
        self.prefetch.get()
    }

    /// Checks both names.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName) for the first bad name.
    pub fn validate(&self) -> Result<()> {
        crate::name::validate_topic(&self.topic)?;
        crate::name::validate_group(&self.group)?;
        Ok(())
    }
}

/// The stream of deliveries of one subscription. It ends when the
/// subscriber or broker is closed; an `Err` item reports a failure the
/// adapter could not recover from and is followed by the end of the stream.
pub type DeliveryStream = Pin<Box<dyn Stream<Item = Result<Delivery>> + Send>>;

/// Receives messages.
#[async_trait]
pub trait Subscriber: Close {
    /// Creates the topic and the group's queue/consumer ahead of time, as
    /// Watermill's `SubscribeInitialize`: from then on the group keeps every
    /// message published to the topic, even before anyone subscribes.
    /// Idempotent. [`Subscriber::subscribe`] does this too.
    ///
    /// # Errors
    ///
    /// Invalid names, or the broker refused to create the resources.
    async fn provision(&self, subscription: &Subscription) -> Result<()>;

    /// Starts consuming. Dropping the stream ends the subscription cleanly:
    /// every delivery it had not yet handed out comes back for the group.
    ///
    /// # Errors
    ///
    /// Invalid names, a closed subscriber, or broker failures.
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream>;

    /// The `messaging.system` of spans and metrics: `"memory"`,
    /// `"rabbitmq"`, `"kafka"`, `"nats"`; `"unknown"` unless the adapter
    /// says.
    fn messaging_system(&self) -> &'static str {
        "unknown"
    }

    /// How many messages `group` has not yet settled on `topic`; see
    /// [`Lag`] for what each broker counts. Not bounded by itself: call it
    /// through [`Broker::lag`] or [`lag_within`](crate::telemetry::lag_within).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`](crate::Error::Unsupported) unless the adapter
    /// implements it; the group or topic does not exist; broker failures.
    async fn lag(&self, topic: &str, group: &str) -> Result<Lag> {
        let _ = (topic, group);
        Err(crate::Error::Unsupported {
            broker: self.messaging_system(),
            feature: "consumer lag",
        })
    }
}

/// A publisher and a subscriber of one broker, chosen at run time.
///
/// Cheap to clone. It implements [`Publisher`], [`Subscriber`] and
/// [`Close`], and has the same methods as inherent ones, so they work
/// without importing the traits.
#[derive(Clone)]
pub struct Broker {
    name: &'static str,
    publisher: Arc<dyn Publisher>,
    subscriber: Arc<dyn Subscriber>,
    requester: Option<Arc<dyn crate::request::Requester>>,
}

impl Broker {
    /// A broker from an adapter's publisher and subscriber. `name` is the
    /// adapter's (`"memory"`, `"amqp"`, ...).
    pub fn new(
        name: &'static str,
        publisher: Arc<dyn Publisher>,
        subscriber: Arc<dyn Subscriber>,
    ) -> Self {
        Broker {
            name,
            publisher,
            subscriber,
            requester: None,
        }
    }

    /// The broker with `requester` answering [`Broker::request`]: the
    /// adapter's request/reply (see [`crate::request`]).
    pub fn with_requester(mut self, requester: Arc<dyn crate::request::Requester>) -> Self {
        self.requester = Some(requester);
        self
    }

    /// The requester, if the adapter offers request/reply.
    pub fn requester(&self) -> Option<Arc<dyn crate::request::Requester>> {
        self.requester.clone()
    }

    /// The adapter's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The publisher.
    pub fn publisher(&self) -> Arc<dyn Publisher> {
        self.publisher.clone()
    }

    /// The subscriber.
    pub fn subscriber(&self) -> Arc<dyn Subscriber> {
        self.subscriber.clone()
    }

    /// See [`Publisher::publish`].
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`].
    pub async fn publish(&self, topic: &str, message: Message) -> Result<()> {
        self.publisher.publish(topic, message).await
    }

    /// See [`Publisher::publish_batch`].
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish_batch`].
    pub async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        self.publisher.publish_batch(topic, messages).await
    }

    /// See [`Subscriber::provision`].
    ///
    /// # Errors
    ///
    /// As [`Subscriber::provision`].
    pub async fn provision(&self, subscription: &Subscription) -> Result<()> {
        self.subscriber.provision(subscription).await
    }

    /// See [`Subscriber::subscribe`].
    ///
    /// # Errors
    ///
    /// As [`Subscriber::subscribe`].
    pub async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        self.subscriber.subscribe(subscription).await
    }

    /// How many messages `group` has not yet settled on `topic` (see
    /// [`Lag`]), waiting at most [`DEFAULT_LAG_TIMEOUT`].
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`](crate::Error::Timeout) past the bound; otherwise
    /// as [`Subscriber::lag`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier_core::Result<()> {
    /// use courier_core::{Message, Subscription};
    /// let broker = courier_memory::MemoryBroker::new().into_broker();
    /// broker.provision(&Subscription::new("orders", "billing")).await?;
    /// broker.publish("orders", Message::new("a")).await?;
    /// assert_eq!(broker.lag("orders", "billing").await?.total, 1);
    /// assert!(broker.health().is_usable());
    /// # Ok(()) }
    /// ```
    pub async fn lag(&self, topic: &str, group: &str) -> Result<Lag> {
        crate::error::within(
            "lag",
            DEFAULT_LAG_TIMEOUT,
            self.subscriber.lag(topic, group),
        )
        .await
    }

    /// Whether both the publisher's and the subscriber's connections are
    /// usable now (the worse of the two); no round trip to the broker.
    pub fn health(&self) -> Health {
        self.publisher.health().and(self.subscriber.health())
    }

    /// Closes the subscriber and the publisher, side by side. Idempotent.
    ///
    /// # Errors
    ///
    /// The first failure; both are closed regardless.
    pub async fn close(&self) -> Result<()> {
        // Side by side: each may wait out its own bound on a broker that
        // stopped answering, and the caller should wait for one, not both.
        let (sub, publ) = futures::join!(self.subscriber.close(), self.publisher.close());
        sub.and(publ)
    }
}

#[async_trait]
impl Close for Broker {
    async fn close(&self) -> Result<()> {
        Broker::close(self).await
    }

    fn health(&self) -> Health {
        Broker::health(self)
    }
}

#[async_trait]
impl Publisher for Broker {
    async fn publish(&self, topic: &str, message: Message) -> Result<()> {
        self.publisher.publish(topic, message).await
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        self.publisher.publish_batch(topic, messages).await
    }
}

#[async_trait]
impl Subscriber for Broker {
    async fn provision(&self, subscription: &Subscription) -> Result<()> {
        self.subscriber.provision(subscription).await
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        self.subscriber.subscribe(subscription).await
    }

    fn messaging_system(&self) -> &'static str {
        self.subscriber.messaging_system()
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<Lag> {
        self.subscriber.lag(topic, group).await
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("name", &self.name)
            .field("publisher", &self.publisher)
            .field("subscriber", &self.subscriber)
            .field("requester", &self.requester)
            .finish()
    }
}
