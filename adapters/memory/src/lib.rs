//! courier-memory: the in-process broker, courier's embedded default.
//!
//! It honours the whole courier contract, so code written against it runs
//! unchanged on RabbitMQ, Kafka or NATS JetStream:
//!
//! - topics with consumer groups: streams of the same group compete for
//!   messages, every group receives every message;
//! - a group keeps every message published after it was created
//!   ([`Subscriber::provision`] or the first subscribe); a group created with
//!   [`StartPosition::Earliest`](courier_core::StartPosition::Earliest) also
//!   starts with the topic's last [`MemoryConfig::retention`] messages;
//! - messages of a group are delivered in publish order; a nacked or
//!   abandoned (dropped unsettled) delivery goes back to the head of the
//!   queue, so it comes next;
//! - at most [`Subscription::prefetch`] unsettled deliveries per stream;
//! - `publish` returns once the message is in every group's queue.
//!
//! Nothing survives the process: it is for tests, examples and services
//! that do not need a broker yet. Messages travel as they are, never
//! encoded: every message is courier's, so there is no foreign producer
//! whose headers to distrust ([`courier_core::adapter::origin`]).
//!
//! # Bounded queues
//!
//! A group holds at most [`MemoryConfig::max_queue_len`] messages (waiting
//! plus handed out and not yet settled; 100,000 by default), so a group
//! whose consumers stopped cannot grow the process without bound. A publish
//! that would take any group of its topic past it waits until the
//! consumers settle enough, at most [`MemoryConfig::publish_timeout`], then
//! fails with [`Error::Timeout`] ([`WhenFull::Wait`], the default: the
//! publisher slows to the consumers' pace); with [`WhenFull::Reject`] it
//! fails at once with an [`Error::Broker`] of kind
//! [`LimitReached`](BrokerErrorKind::LimitReached) naming the topic and
//! the group. Either way nothing is appended to any group (a publish is all
//! or nothing), and a batch larger than the limit is refused at once. A
//! dead letter to a full group is refused the same way, and the message
//! stays in its own group (the consumer runtime holds it and publishes the
//! copy again with a backoff, see
//! [the runtime's dead letters](courier_core::runtime#dead-letters); it
//! also provisions the consumer's group on the dead-letter topic before it
//! starts, so dead letters are queued rather than kept only as history). Topics without groups keep only their last
//! [`MemoryConfig::retention`] messages.
//!
//! # Unroutable publishes
//!
//! A topic keeps its last [`MemoryConfig::retention`] messages (10,000 by
//! default) for groups created later with
//! [`StartPosition::Earliest`](courier_core::StartPosition::Earliest), as
//! Kafka and NATS JetStream keep theirs: a publish to a topic without
//! groups returns `Ok` and a later `Earliest` group receives the message.
//! With retention 0 nothing keeps it, so such a publish fails with an
//! [`Error::Broker`] of kind [`Unroutable`](BrokerErrorKind::Unroutable)
//! naming the topic (nothing is stored), unless
//! [`MemoryConfig::unroutable`] is [`UnroutablePolicy::Drop`]
//! (`unroutable=drop`): then it returns `Ok` and the message is gone.
//!
//! # Observability
//!
//! Spans, `traceparent` headers and metrics come from core
//! ([`courier_core::telemetry`]); `messaging.system` is `memory`. Lag
//! ([`Subscriber::lag`]) is exact: the group's queue plus the messages
//! handed out and not yet settled. Health is usable until closed.
//!
//! # Request/reply
//!
//! [`Broker::request`](courier_core::Broker::request) publishes the request
//! to the topic like any message, so a responder consuming it as a group
//! answers it; the reply goes straight into the requester's in-process
//! inbox. A topic without any group is
//! [`RequestError::NoResponders`](courier_core::request::RequestError::NoResponders)
//! at once; a group without a running responder keeps the request until
//! one runs or its deadline passes (the requester sees a timeout).
//!
//! # URL
//!
//! `memory://` is a broker of its own; `memory://name` the process-wide
//! broker called `name` (percent-decoded), shared by every connection that
//! names it ([`MemoryBroker::connect`]). Options ([`MemoryConfig::from_url`]):
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `max_payload` | [`MemoryConfig::max_payload`], bytes | 16 MiB |
//! | `retention` | [`MemoryConfig::retention`], messages per topic | 10,000 |
//! | `max_queue_len` | [`MemoryConfig::max_queue_len`], messages per group | 100,000 |
//! | `when_full` | [`MemoryConfig::when_full`]: `wait` or `reject` | `wait` |
//! | `publish_timeout` | [`MemoryConfig::publish_timeout`]: how long a publish waits for room | 30 s |
//! | `unroutable` | [`MemoryConfig::unroutable`]: `error` or `drop`, with retention 0 (see [Unroutable publishes](#unroutable-publishes)) | `error` |
//! | `connect_timeout`, `client_name` (`client_id`) | courier's shared options: checked, no effect (nothing to connect to), so one URL's options work on every broker | |
//!
//! Any other option is an [`Error::InvalidUrl`]; so are a user, password,
//! port or path.
//!
//! # Examples
//!
//! ```
//! use courier_core::prelude::*;
//! use courier_memory::MemoryBroker;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> courier_core::Result<()> {
//! let broker = MemoryBroker::new();
//! let mut deliveries = broker.subscribe(Subscription::new("greetings", "printer")).await?;
//! broker.publish("greetings", Message::new("hello")).await?;
//!
//! let delivery = deliveries.next().await.expect("open stream")?;
//! assert_eq!(delivery.message().payload().as_ref(), b"hello");
//! delivery.ack().await?;
//! broker.close().await?;
//! # Ok(()) }
//! ```

mod config;
mod delivery;
mod inbox;
mod request;
mod state;
mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};

use courier_core::adapter::instrumented_publish;
use courier_core::error::within;
use courier_core::telemetry::{Health, Lag};
use courier_core::{
    Broker, BrokerErrorKind, Close, DeliveryStream, Error, Message, Publisher, Result, Subscriber,
    Subscription, UnroutablePolicy, async_trait,
};
use parking_lot::Mutex;

pub use config::{
    DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_QUEUE_LEN, DEFAULT_PUBLISH_TIMEOUT, DEFAULT_RETENTION,
    MemoryConfig, SCHEMES, URL_OPTIONS, WhenFull,
};
use state::{Handle, State};
use subscriber::MemoryStream;

/// A connection to an in-process broker.
///
/// It implements [`Publisher`], [`Subscriber`] and [`Close`] (import them,
/// or `courier_core::prelude::*`). Clones share the connection (closing one
/// closes all clones). [`MemoryBroker::new_connection`] opens another connection to the same topics,
/// as a second `courier::connect` to a networked broker would: closing it
/// leaves the others working.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    state: Arc<State>,
    handle: Arc<Handle>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// A new, empty broker with default settings.
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A new, empty broker.
    pub fn with_config(config: MemoryConfig) -> Self {
        MemoryBroker {
            state: Arc::new(State::new(config)),
            handle: Arc::default(),
        }
    }

    /// Another connection to the same broker.
    pub fn new_connection(&self) -> Self {
        MemoryBroker {
            state: self.state.clone(),
            handle: Arc::default(),
        }
    }

    /// A connection to the process-wide broker called `name`, created on
    /// first use with default settings and kept while any connection to it
    /// lives. An existing broker of that name is joined whatever its
    /// settings.
    pub fn named(name: &str) -> Self {
        Self::named_with(name, None)
    }

    /// The broker a `memory://[name][?options]` URL names: a new one for
    /// `memory://`, else the process-wide broker called `name`, created
    /// with the URL's settings on first use.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] as [`MemoryConfig::from_url`], and when the
    /// named broker exists with other settings than the URL's.
    ///
    /// # Examples
    ///
    /// ```
    /// use courier_memory::MemoryBroker;
    /// let a = MemoryBroker::connect("memory://orders?retention=100")?;
    /// let b = MemoryBroker::connect("memory://orders?retention=100")?;
    /// assert!(MemoryBroker::connect("memory://orders").is_err());
    /// # Ok::<(), courier_core::Error>(())
    /// ```
    pub fn connect(url: &str) -> Result<Self> {
        let (name, config) = config::parse_url(url)?;
        let Some(name) = name else {
            return Ok(Self::with_config(config));
        };
        let broker = Self::named_with(&name, Some(config.clone()));
        if broker.state.config != config {
            return Err(courier_core::adapter::url::invalid(
                url,
                format!(
                    "the in-process broker {name:?} exists with other settings: {:?}",
                    broker.state.config
                ),
            ));
        }
        Ok(broker)
    }

    /// The process-wide broker `name`, created with `config` (default
    /// settings for `None`) when it does not exist.
    fn named_with(name: &str, config: Option<MemoryConfig>) -> Self {
        static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<State>>>> = OnceLock::new();
        let mut registry = REGISTRY.get_or_init(Default::default).lock();
        registry.retain(|_, state| state.strong_count() > 0);
        if let Some(state) = registry.get(name).and_then(Weak::upgrade) {
            return MemoryBroker {
                state,
                handle: Arc::default(),
            };
        }
        let broker = Self::with_config(config.unwrap_or_default());
        registry.insert(name.to_owned(), Arc::downgrade(&broker.state));
        broker
    }

    /// This connection as a run-time chosen [`Broker`].
    pub fn into_broker(self) -> Broker {
        let this = Arc::new(self);
        Broker::new("memory", this.clone(), this.clone()).with_requester(this)
    }

    fn check_open(&self) -> Result<()> {
        if self.handle.is_closed() {
            return Err(Error::Closed("memory broker connection"));
        }
        Ok(())
    }

    async fn publish_all(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        self.check_open()?;
        self.state.check_publish(topic, &messages)?;
        self.append(topic, messages).await
    }

    /// Appends messages `State::check_publish` has passed:
    /// the part of a publish after its checks, which a request has made
    /// already.
    async fn append(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.state.is_unroutable(topic) {
            return match self.state.config.unroutable {
                UnroutablePolicy::Drop => Ok(()),
                _ => Err(courier_core::unroutable::error("memory", topic, None)),
            };
        }
        let Err(full) = self.state.try_append(topic, messages) else {
            return Ok(());
        };
        let config = &self.state.config;
        if config.when_full == WhenFull::Reject || full.messages.len() > config.max_queue_len {
            return Err(state::queue_full(topic, &full.group, config.max_queue_len));
        }
        within(
            "memory publish (waiting for room in a full group)",
            config.publish_timeout,
            self.wait_for_room(topic, full.messages),
        )
        .await
    }

    /// Appends once every group of `topic` has room, waiting for
    /// settlements meanwhile.
    async fn wait_for_room(&self, topic: &str, mut messages: Vec<Message>) -> Result<()> {
        let room = &self.state.room;
        room.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = WaitingPublisher(room);
        loop {
            let freed = room.freed.notified();
            tokio::pin!(freed);
            // Registered before the check: a settlement between the check
            // and the wait is not missed.
            freed.as_mut().enable();
            self.check_open()?;
            match self.state.try_append(topic, messages) {
                Ok(()) => return Ok(()),
                Err(full) => messages = full.messages,
            }
            freed.await;
        }
    }
}

/// Counts a publisher waiting for room while it waits.
struct WaitingPublisher<'a>(&'a state::Room);

impl Drop for WaitingPublisher<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Closes this connection: its streams end, publishing through it fails
/// with [`Error::Closed`]. Deliveries already handed out can still be
/// settled; messages its streams had not handed out go back to their
/// groups. Never fails.
#[async_trait]
impl Close for MemoryBroker {
    fn health(&self) -> Health {
        if self.handle.is_closed() {
            Health::Unusable("closed".into())
        } else {
            Health::Usable
        }
    }

    async fn close(&self) -> Result<()> {
        if !self.handle.closed.swap(true, Ordering::AcqRel) {
            self.state.wake_all();
            // Publishers waiting for room find the connection closed.
            self.state.room.freed.notify_waiters();
        }
        Ok(())
    }
}

#[async_trait]
impl Publisher for MemoryBroker {
    async fn publish(&self, topic: &str, message: Message) -> Result<()> {
        self.publish_batch(topic, vec![message]).await
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        instrumented_publish("memory", topic, messages, |messages| {
            self.publish_all(topic, messages)
        })
        .await
    }
}

#[async_trait]
impl Subscriber for MemoryBroker {
    async fn provision(&self, subscription: &Subscription) -> Result<()> {
        subscription.validate()?;
        self.check_open()?;
        self.state.group(
            subscription.topic(),
            subscription.group(),
            subscription.start_position(),
        );
        Ok(())
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        subscription.validate()?;
        self.check_open()?;
        let group = self.state.group(
            subscription.topic(),
            subscription.group(),
            subscription.start_position(),
        );
        let prefetch = usize::from(subscription.prefetch_count());
        Ok(Box::pin(MemoryStream::new(
            self.state.clone(),
            self.handle.clone(),
            group,
            prefetch,
        )))
    }

    fn messaging_system(&self) -> &'static str {
        "memory"
    }

    /// Exact: the group's queue plus the messages delivered (or taken for
    /// delivery) and not yet settled.
    async fn lag(&self, topic: &str, group: &str) -> Result<Lag> {
        self.check_open()?;
        let Some(group) = self.state.find_group(topic, group) else {
            return Err(Error::broker(
                "memory",
                "lag",
                BrokerErrorKind::NotFound,
                format!("no group {group:?} on topic {topic:?}"),
            ));
        };
        let (ready, out) = group.backlog();
        Ok(Lag::new(ready as u64, Some(out as u64)))
    }
}
