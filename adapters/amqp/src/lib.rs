//! courier-amqp: RabbitMQ (AMQP 0-9-1) for courier, built on [lapin].
//!
//! `courier::connect("amqp://user:pass@host:5672/vhost")` (or `amqps://`)
//! reaches it through the facade; [`AmqpBroker::connect_with`] takes an
//! [`AmqpConfig`].
//!
//! # Upgrading from `<topic>.<group>` queues
//!
//! Earlier versions named group queues `<topic>.<group>`, which lets topic
//! `orders.eu` with group `billing` and topic `orders` with group
//! `eu.billing` share one queue. Queues are now `<topic>:<group>`. A
//! deployment upgrading with queues of the old names either
//!
//! - keeps them: `queue_naming=dotted` in the URL (or
//!   [`AmqpConfig::queue_naming`]) names queues as before; or
//! - moves: stop publishing, let the consumers empty the old queues, start
//!   the new version (it declares and binds the new queues), then delete the
//!   old queues (`rabbitmqctl delete_queue <topic>.<group>`), which otherwise
//!   keep receiving a copy of every message.
//!
//! # URL
//!
//! `amqp://user:password@host:port/vhost?options` (`amqps://` for TLS).
//! User, password and virtual host are percent-decoded (`%2f` is the
//! virtual host `/`); the URL in errors and logs has the password masked.
//! Options ([`AmqpConfig::from_url`]; durations as `500ms`, `10s`, `2m` or
//! plain seconds):
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `connect_timeout` | [`AmqpConfig::connect_timeout`]: TCP and AMQP handshake together | 10 s |
//! | `client_name` (or `client_id`) | [`AmqpConfig::connection_name`], shown in the management UI | `courier` |
//! | `publish_timeout` | [`AmqpConfig::confirm_timeout`]: the bound on a whole publish (confirms and reconnecting included), and on `provision` and `subscribe` | 30 s |
//! | `unroutable` | [`AmqpConfig::unroutable`]: `error` or `drop` (see [Unroutable publishes](#unroutable-publishes)) | `error` |
//! | `queue_type` | [`AmqpConfig::queue_type`] of group queues: `quorum` or `classic` | `quorum` |
//! | `queue_naming` | [`AmqpConfig::queue_naming`]: `separated` (`<topic>:<group>`) or `dotted` (`<topic>.<group>`, earlier versions) | `separated` |
//! | `single_active_consumer` | [`AmqpConfig::single_active_consumer`]: `true` or `false` | `false` |
//! | `reconnect_give_up` | [`Reconnect::give_up_after`]: how long a lost connection is retried before operations fail (a consumer run by the runtime then subscribes again) | 2 min |
//! | `heartbeat` | lapin: heartbeat interval asked of the server, seconds (0: none) | [`AmqpConfig::heartbeat`], 10 s |
//! | `channel_max` | lapin: most channels per connection | the server's |
//! | `frame_max` | lapin: largest frame, bytes | the server's |
//! | `connection_timeout` | lapin: TCP connect timeout, milliseconds | none (`connect_timeout` bounds it) |
//! | `auth_mechanism` | lapin: `plain`, `amqplain`, `external`, `anonymous` or `rabbit-cr-demo` | `plain` |
//!
//! The lapin options ([`LAPIN_URL_OPTIONS`]) are checked and handed to lapin
//! unchanged; lapin reads no TLS options from the URL. Any other option is
//! an [`Error::InvalidUrl`](courier_core::Error::InvalidUrl) naming it. A
//! default prefetch is not an option: each [`Subscription`] carries its own.
//!
//! # Topology
//!
//! - A **topic** is a durable **fanout** exchange of the same name. Fanout,
//!   because every group of a topic receives every message, and courier
//!   routes by topic alone; a message's key travels in a header, not as the
//!   routing key.
//! - A **consumer group** is a durable queue `<topic>:<group>` bound to the
//!   topic's exchange: subscriptions of one group compete for its messages,
//!   and every group gets its own copy. `:` cannot occur in topic or group
//!   names, so every (topic, group) pair has a queue of its own; its retry
//!   queues are `<topic>:<group>:retry:<delay>ms`. Prefixes for exchange and queue
//!   names are configurable; names over AMQP's 255 bytes are shortened with
//!   a hash. Names starting with `amq.` are reserved by RabbitMQ and refused
//!   by it.
//! - [`Subscriber::provision`] declares the exchange, the group's queue and
//!   the binding; [`Subscriber::subscribe`] does it too. **A group receives
//!   the messages published after its queue exists**: RabbitMQ keeps no
//!   history, so [`StartPosition::Earliest`](courier_core::StartPosition::Earliest)
//!   means the same as `Latest` here. Provision groups (at deployment, or
//!   with `provision`) before publishing what they must not miss.
//! - `publish` declares the topic's exchange on its first use over a
//!   connection (remembered until the connection is replaced), so
//!   publishing never fails for lack of an exchange. Publishes racing for
//!   a new topic share one declaration: the first declares, the others
//!   wait for its outcome (a failed declaration is reported to all of them
//!   and tried again by the next publish). A message published to
//!   a topic without groups reaches no queue: see below.
//!
//! # Unroutable publishes
//!
//! RabbitMQ routes a message to the queues bound at publish time and keeps
//! nothing for queues declared later, so a message published to a topic no
//! group is bound to is lost. courier publishes with `mandatory` set: the
//! broker returns such a message (`basic.return`, then the confirm), and
//! `publish` fails with an [`Error::Broker`](courier_core::Error::Broker)
//! of kind [`Unroutable`](courier_core::BrokerErrorKind::Unroutable) whose
//! source is a [`courier_core::unroutable::UnroutableTopic`] naming the
//! topic (its cause, an [`AmqpError::Unroutable`], names the exchange and
//! RabbitMQ's reply, `NO_ROUTE`). A returned message is never reported as
//! confirmed, and it is not retryable: publishing again fails the same way
//! until a group is provisioned. In a `publish_batch`, every message is
//! sent (they are pipelined) and every confirm awaited; the messages before
//! the first returned one reached their queues, the batch fails as a whole
//! with the error above, and nothing is published again. All messages of a
//! batch go to one exchange, so the ones after it were returned too,
//! unless a group was bound in the meantime (those are in its queue).
//!
//! For fire-and-forget publishing, `unroutable=drop` in the URL (or
//! [`AmqpConfig::unroutable`] = [`UnroutablePolicy::Drop`](courier_core::UnroutablePolicy::Drop))
//! publishes without `mandatory`: RabbitMQ drops such a message and
//! `publish` returns `Ok` once it confirmed. Dead letters and requests are
//! always published with `mandatory`, whatever the option (see
//! [Guarantees](#guarantees) and [Request/reply](#requestreply)).
//!
//! # Queues: quorum by default
//!
//! Group queues are [quorum queues](QueueType::Quorum) unless configured
//! otherwise (`queue_type=classic` in the URL, or [`AmqpConfig::queue_type`]):
//! the broker counts deliveries (`x-delivery-count`), so
//! [`Delivery::delivery_count`](courier_core::Delivery::delivery_count) is
//! exact, and every message is replicated and persistent. With classic
//! queues the broker only knows *whether* a message was delivered before,
//! so the count is `None`. An existing queue keeps its type: declaring it
//! with another type fails (`PRECONDITION_FAILED`).
//!
//! **Delivery limit.** RabbitMQ 4 gives every quorum queue a delivery limit
//! (20 returns unless a policy or `x-delivery-limit` says otherwise) and
//! takes a message returned more often out of the queue. So that such a
//! message is never simply gone, courier declares each quorum group queue
//! with the exchange of the topic's dead-letter topic (`<topic>.dlq`) as its
//! `x-dead-letter-exchange`: the broker moves the message there (its id and
//! payload unchanged, RabbitMQ's `x-death` headers added and not shown),
//! where a group provisioned on `<topic>.dlq` keeps it. The consumer
//! runtime dead-letters a failing message itself long before (after
//! the [retry policy](courier_core::runtime::RetryPolicy)'s attempts,
//! retried in the handler, not requeued), so the broker's limit only
//! catches code that requeues one message again and again. RabbitMQ 3 has
//! no default limit. Queues declared by courier 0.1 lack that argument:
//! declaring one again fails with a [`Conflict`](courier_core::BrokerErrorKind::Conflict)
//! (`PRECONDITION_FAILED`, inequivalent `x-dead-letter-exchange`); drain
//! and delete it, and courier declares it anew.
//!
//! **What survives a crash.** A confirmed message survives a hard kill of
//! the broker (`SIGKILL`, no clean shutdown) and its restart, in quorum and
//! classic queues alike: the conformance suite kills RabbitMQ while a
//! publisher runs, with one group's queue declared at the start and one
//! declared 3 seconds before the kill, and every confirmed message is
//! consumed afterwards from both. One window is not covered: a quorum
//! queue killed within about a second of its declaration can come back
//! without a leader (RabbitMQ writes its Raft name registry every 500 ms),
//! every message in it is then lost, and it stays so until the queue is
//! deleted and declared again. Seen on RabbitMQ 3.10 and 4.0; a client
//! cannot close it. RabbitMQ says nothing about it: declaring the queue
//! works (it reports 0 messages and 0 consumers), a consume on it gets no
//! answer, and a publish routed to it no confirm. courier tells it apart:
//! `provision` and `subscribe` of a quorum group queue check that the
//! queue starts a consumer when the broker answers for it (an empty queue
//! is probed with a consumer of prefetch 1, closed at once), each step
//! within a third of [`AmqpConfig::confirm_timeout`] (at least 1 s), and
//! fail with a retryable [`Error::Broker`](courier_core::Error::Broker) of
//! kind `Unavailable` whose source is [`AmqpError::NoLeader`] naming the
//! queue; both stay within `confirm_timeout`. A publish to the topic of a
//! queue this broker found so still waits for its confirm until
//! `confirm_timeout`, then fails with the same error instead of
//! [`Error::Timeout`](courier_core::Error::Timeout) (a broker that never
//! provisioned the queue cannot know its name and reports the timeout).
//! The publishing channel is replaced after a confirm that did not come:
//! RabbitMQ holds back every later confirm on it. Provision queues
//! when a service is deployed ([`Subscriber::provision`]),
//! not in the first second of a crash-prone start, or use classic queues
//! where that window matters.
//!
//! # Guarantees
//!
//! - **Publish**: publisher confirms are always on. `publish` returns after
//!   the broker confirmed the message, persistent (delivery mode 2), into
//!   every bound queue; `publish_batch` sends the whole batch, then awaits
//!   the confirms. A publish interrupted by a lost connection is sent again
//!   once the adapter has reconnected (at least once: the broker may have
//!   stored it before the loss), or fails with
//!   [`Error::Timeout`](courier_core::Error::Timeout) when that has not
//!   happened within `publish_timeout` ([`AmqpConfig::confirm_timeout`],
//!   the one bound on a publish, whatever the connection is doing); it is
//!   never dropped silently. A batch is resent from its first unconfirmed
//!   message, so order is kept. Every publish of a connection goes through
//!   one channel in confirm mode and waits only for its own confirms, which
//!   the broker sends cumulatively; so concurrent callers keep many
//!   confirms outstanding at once, and confirmed publishing from a few
//!   hundred concurrent callers runs about as fast as the broker ingests
//!   unconfirmed messages (see `benches/throughput.rs`). A single caller
//!   waits a round trip per `publish` (or per `publish_batch`).
//! - **Message**: id, key, headers (user and courier's own), content type,
//!   timestamp (to the millisecond), correlation and causation id and
//!   payload arrive exactly as published (see [Wire format](#wire-format)).
//! - **Consume**: `basic.qos` limits each subscription to
//!   [`Subscription::prefetch`] unsettled deliveries. `ack` is `basic.ack`;
//!   AMQP 0-9-1 has no reply to it, so `Ok` means it was sent on the live
//!   channel the message came on. Settling a delivery whose channel is gone
//!   (connection lost, subscriber closed) fails with an error whose source
//!   is [`AmqpError::StaleDelivery`]: the broker has requeued the message
//!   and delivers it again. A consumer channel, and the subscriber's
//!   connection on `close`, stay open 300 ms after their last settlement:
//!   RabbitMQ 3.x quorum queues can drop acks still buffered in the broker
//!   when their channel closes (rabbitmq-server issue 10327), which would
//!   deliver acked messages again.
//! - **Nack**: [`Nack::Requeue`](courier_core::Nack::Requeue) is
//!   `basic.nack` with requeue (where the message goes: see
//!   [Ordering](#ordering)).
//!   [`Nack::RequeueAfter`](courier_core::Nack::RequeueAfter) works on stock
//!   RabbitMQ without plugins: the message is published (with confirm) to a
//!   retry queue of the group whose messages expire after the delay and are
//!   dead-lettered straight back to the group's queue, then the original is
//!   acked. Delays are rounded up to buckets 19 % apart (one retry queue per
//!   bucket, so a long delay never holds up a short one); a message waits
//!   at least the delay asked for and at most a fifth longer (plus the
//!   broker's expiry granularity). [`Nack::DeadLetter`](courier_core::Nack::DeadLetter)
//!   publishes [`DeadLetter::to_message`](courier_core::DeadLetter::to_message)'s
//!   copy to the dead-letter topic's exchange with `mandatory` set and a
//!   confirm, then acks the original; if the dead-letter topic has no group
//!   the publish is returned unroutable, the original is requeued and the
//!   nack fails, so a dead letter is never lost: provision a group on
//!   `<topic>.dlq`. When moving the message fails, it is requeued and the
//!   nack returns the error. The consumer runtime provisions that group
//!   (the consumer's own group name) before it starts, and when the copy is
//!   refused anyway it holds the original unacked and publishes the copy
//!   again with a backoff instead of requeueing it (see
//!   [the runtime's dead letters](courier_core::runtime#dead-letters)).
//! - **Dropped deliveries** are requeued (`basic.nack`), without blocking
//!   and without needing a runtime.
//! - **Dropping a stream** cancels its consumer. Deliveries already handed
//!   out can still be settled; the messages it had received but not handed
//!   out go back to the queue, in order, when the last of those is settled
//!   (its channel then closes). Under [`AmqpConfig::single_active_consumer`]
//!   the channel closes at once instead, so that everything the departing
//!   subscription held is back in the queue before the next consumer takes
//!   over; deliveries it had handed out then cannot be settled any more.
//!
//! # Wire format
//!
//! | courier | AMQP 0-9-1 |
//! |---|---|
//! | payload | body, `delivery_mode` 2 (persistent) |
//! | id | `message_id` property (`courier-id` header if over 255 bytes) |
//! | key | `courier-key` header (the routing key stays empty) |
//! | content type | `content_type` property (`courier-content-type` header if over 255 bytes) |
//! | timestamp | `timestamp` property (seconds); the milliseconds come from the id when it is a UUID v7 of that very millisecond, as every `Message::new` is, else from the `courier-timestamp-ms` header |
//! | correlation id | `correlation_id` property (`courier-correlation-id` header if over 255 bytes) |
//! | causation id, other headers | headers, as long strings |
//! | origin | `app_id` property `courier` on every message courier publishes |
//!
//! A message whose `app_id` is not `courier` comes from another producer,
//! and its `courier-` headers are not trusted: they are left out with a
//! debug log line (a `courier-correlation-id` header of such a message is
//! no correlation id; its `correlation_id` property is). Messages of
//! courier versions that did not set `app_id` are read the same way. See
//! [`courier_core::adapter::origin`], the policy every adapter applies.
//! Messages of other producers are delivered too: the properties fill in
//! what the headers lack; a message without any id gets `amqp-` and a hash
//! of its body, headers and properties, the same on every delivery, so
//! deduplication by id works for it (byte-identical messages then share an
//! id). Scalar header values become text, nested tables and arrays (and
//! names or values courier's header rules refuse) are left out with a
//! debug log line, and the headers RabbitMQ adds itself (`x-death`,
//! `x-first-death-*`, `x-last-death-*`, `x-delivery-count`) are not shown
//! as message headers. Header names are limited to AMQP's 255 bytes
//! (courier allows 256): a longer one fails the publish.
//!
//! # Ordering
//!
//! A group's queue is FIFO. With one subscription per group, messages
//! arrive in publish order (per publisher; `publish_batch` keeps its order,
//! and so do concurrent publishes of one task awaited one after the
//! other). Where a message goes when it is delivered again depends on the
//! queue type:
//!
//! | queue | nacked ([`Nack::Requeue`](courier_core::Nack::Requeue)) or dropped | returned because its channel closed (lost connection, dropped stream, closed subscriber) |
//! |---|---|---|
//! | classic | back at its place | back at its place |
//! | quorum with a delivery limit (RabbitMQ 4: 20 unless configured) | back at its place | in front, in order |
//! | quorum without a delivery limit (RabbitMQ 3's default) | behind the messages already queued | in front, in order |
//!
//! Either way it comes after the messages the subscription already holds
//! (up to `prefetch`). So a group that must see redeliveries in publish
//! order uses classic queues (or quorum queues on RabbitMQ 4) with `prefetch` 1, or retries in the handler
//! before settling.
//!
//! Subscriptions competing in one group split the messages between them,
//! so per-key order then needs the consumer runtime's key lanes in one
//! subscription, or
//! [`AmqpConfig::single_active_consumer`] (`single_active_consumer=true` in
//! the URL): only one subscription of the group receives at a time, the
//! others wait as hot standbys. A delayed requeue puts the message behind
//! the ones published meanwhile.
//!
//! # Reconnection
//!
//! lapin does not reconnect on its own; this adapter does. Publisher and
//! subscriber each hold one connection. When it is lost, the next
//! operation (or the consumer that saw the loss) reconnects with
//! exponential backoff ([`Reconnect`]), declares the topology again and
//! resumes every subscription on the same [`DeliveryStream`].
//! An operation waits for it no longer than its own bound (a publish,
//! `provision` and `subscribe` fail with a timeout after `publish_timeout`,
//! and the next call tries again); only when reconnecting gives up
//! ([`Reconnect::give_up_after`], 2 minutes by default) do streams yield
//! the error and end. The first connection is not retried: connecting reports at once
//! (within [`AmqpConfig::connect_timeout`]) an [`Error::Connect`](courier_core::Error::Connect)
//! whose kind tells unreachable host, refused connection, failed
//! authentication, a missing virtual host or missing permissions apart, and
//! whose URL has no password. The waits between reconnect attempts, between
//! attempts to consume again, and between publishes the broker nacked are
//! jittered ([`courier_core::adapter::backoff`]): the clients of a restarted
//! broker do not all come back in the same instant.
//!
//! # Closing
//!
//! `close` closes the subscriber's connection, then the publisher's. For
//! each: new operations fail with [`Error::Closed`](courier_core::Error::Closed),
//! settlements get their 300 ms grace, the connection's detached tasks
//! (dropped streams cancelling their consumers, consumer channels and lost
//! connections being closed) get up to 5 s, and outstanding publisher
//! confirms plus the connection's close get up to 5 s more: at most about
//! 10.3 s per connection, 21 s for the broker. When a step does not finish
//! in time (a broker that stopped answering), `close` still closes the
//! connection and returns [`Error::Timeout`](courier_core::Error::Timeout)
//! naming `close`, never `Ok`. A delayed requeue
//! ([`Nack::RequeueAfter`](courier_core::Nack::RequeueAfter)) is complete
//! when `nack` returns (the copy is in its retry queue), so it needs no
//! waiting at close.
//!
//! # Observability
//!
//! Spans, `traceparent` headers and metrics come from core
//! ([`courier_core::telemetry`]); `messaging.system` is `rabbitmq`. Lag
//! ([`Subscriber::lag`]) is the group queue's ready count from a passive
//! `queue.declare`: AMQP 0-9-1 does not report delivered-but-unacked
//! messages, so [`Lag::unacked`](courier_core::telemetry::Lag::unacked) is
//! `None` and the total leaves them out (the management API would know;
//! courier does not depend on it). Health is usable while the link has a
//! live connection; after a lost connection it stays unusable until the
//! next operation reconnects.
//!
//! # Request/reply
//!
//! [`Broker::request`](courier_core::Broker::request) uses RabbitMQ's
//! direct reply-to: the request is published to the topic's exchange on a
//! channel of the publishing connection that consumes
//! `amq.rabbitmq.reply-to` without acks, with the `reply_to` property set;
//! the broker routes replies straight back to that channel, with no reply
//! queue. The request is published with `mandatory` and confirmed: when no
//! queue is bound (no group exists for the topic) the broker returns it,
//! which is [`RequestError::NoResponders`](courier_core::request::RequestError::NoResponders)
//! at once. A bound queue without a running responder keeps the request
//! until one runs or its deadline passes (the requester times out).
//!
//! Replies are delivered at most once: a reply to a channel that closed
//! (a requester that reconnected or went away) is dropped by the broker.
//! The responder sends its reply on its own connection's reply channel,
//! through the default exchange.
//!
//! When the publishing connection is lost, its reply channel goes with it:
//! a request waiting for a reply then gets none (the reply address was
//! that channel's) and ends in
//! [`RequestError::Timeout`](courier_core::request::RequestError::Timeout).
//! The next request reconnects like a publish and opens a new reply
//! channel, so the same handle is answered again without the caller doing
//! anything. The channel's reply reader is one of the connection's tasks:
//! [`Close::close`] stops it, and requests still waiting end at once with
//! [`RequestError::Transport`](courier_core::request::RequestError::Transport)
//! ([`Error::Closed`](courier_core::Error::Closed)).
//!
//! # Capabilities in the conformance suite
//!
//! Delivery count: yes with quorum queues (the default), no with classic
//! ones. History: no (see Topology). Restart: yes (see Reconnection).
//!
//! # Examples
//!
//! ```no_run
//! use courier_amqp::AmqpBroker;
//! use courier_core::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> courier_core::Result<()> {
//! let broker = AmqpBroker::connect("amqp://guest:guest@localhost:5672/%2f").await?;
//! let mut deliveries = broker.subscribe(Subscription::new("greetings", "printer")).await?;
//! broker.publish("greetings", Message::new("hello")).await?;
//! let delivery = deliveries.next().await.expect("open stream")?;
//! assert_eq!(delivery.message().payload().as_ref(), b"hello");
//! delivery.ack().await?;
//! broker.close().await?;
//! # Ok(()) }
//! ```
//!
//! [lapin]: https://docs.rs/lapin

mod codec;
mod config;
mod connection;
mod delivery;
mod error;
#[cfg(test)]
mod first_publish_tests;
mod lag;
mod leader;
mod publisher;
mod request;
mod session;
mod subscriber;
mod topology;
mod unroutable;
mod watch;

/// The `messaging.system` of spans and metrics.
const MESSAGING_SYSTEM: &str = "rabbitmq";

use std::sync::Arc;

use courier_core::{
    Broker, Close, DeliveryStream, Message, Publisher, Result, Subscriber, Subscription,
    async_trait,
};

pub use config::{
    AmqpConfig, DEFAULT_MAX_PAYLOAD, LAPIN_URL_OPTIONS, QueueNaming, QueueType, Reconnect, SCHEMES,
    URL_OPTIONS,
};
pub use error::AmqpError;
pub use publisher::AmqpPublisher;
pub use subscriber::AmqpSubscriber;

use connection::Link;

/// `config` with the URL's options applied, and the URL for lapin.
fn prepare(url: &str, config: AmqpConfig) -> Result<(String, AmqpConfig)> {
    let config = config.apply_url(url)?;
    Ok((config.lapin_url(url), config))
}

/// A RabbitMQ broker: an [`AmqpPublisher`] and an [`AmqpSubscriber`], each
/// on a connection of its own (as RabbitMQ recommends, so that flow control
/// on publishing never holds up consuming).
///
/// Clones share the connections.
#[derive(Debug, Clone)]
pub struct AmqpBroker {
    publisher: Arc<AmqpPublisher>,
    subscriber: Arc<AmqpSubscriber>,
    requester: Arc<request::AmqpRequester>,
}

impl AmqpBroker {
    /// Connects with the default [`AmqpConfig`] and the URL's options (see
    /// [URL](crate#url)).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`](courier_core::Error::InvalidUrl) for a
    /// malformed URL or an unknown or malformed option, and [`Error::Connect`](courier_core::Error::Connect)
    /// with the kind of failure: [`Unreachable`](courier_core::ConnectErrorKind::Unreachable)
    /// (the host name does not resolve), [`Refused`](courier_core::ConnectErrorKind::Refused),
    /// [`TimedOut`](courier_core::ConnectErrorKind::TimedOut),
    /// [`Authentication`](courier_core::ConnectErrorKind::Authentication)
    /// (wrong user or password), [`NotFound`](courier_core::ConnectErrorKind::NotFound)
    /// (no such virtual host), [`Authorization`](courier_core::ConnectErrorKind::Authorization)
    /// (no permission on the virtual host), [`Tls`](courier_core::ConnectErrorKind::Tls).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, AmqpConfig::default()).await
    }

    /// Connects with `config`; the URL's options override it.
    ///
    /// # Errors
    ///
    /// As [`AmqpBroker::connect`].
    pub async fn connect_with(url: &str, config: AmqpConfig) -> Result<Self> {
        let (url, config) = prepare(url, config)?;
        let config = Arc::new(config);
        let (publishing, subscribing) = futures::join!(
            Link::open(&url, config.clone(), "publisher"),
            Link::open(&url, config, "subscriber"),
        );
        let (publishing, subscribing) = match (publishing, subscribing) {
            (Ok(p), Ok(s)) => (p, s),
            (Err(e), other) => {
                if let Ok(link) = other {
                    // The connect error is the one to report.
                    let _ = link.close().await;
                }
                return Err(e);
            }
            (Ok(link), Err(e)) => {
                let _ = link.close().await;
                return Err(e);
            }
        };
        Ok(AmqpBroker {
            requester: Arc::new(request::AmqpRequester::new(publishing.clone())),
            publisher: Arc::new(AmqpPublisher::new(publishing)),
            subscriber: Arc::new(AmqpSubscriber::new(subscribing)),
        })
    }

    /// The publisher.
    pub fn publisher(&self) -> Arc<AmqpPublisher> {
        self.publisher.clone()
    }

    /// The subscriber.
    pub fn subscriber(&self) -> Arc<AmqpSubscriber> {
        self.subscriber.clone()
    }

    /// This broker as a run-time chosen [`Broker`].
    pub fn into_broker(self) -> Broker {
        Broker::new("amqp", self.publisher, self.subscriber).with_requester(self.requester)
    }
}

/// Closes the subscriber (its streams end; unsettled messages go back to
/// their queues), then the publisher (after outstanding confirms).
#[async_trait]
impl Close for AmqpBroker {
    fn health(&self) -> courier_core::telemetry::Health {
        self.publisher.health().and(self.subscriber.health())
    }

    async fn close(&self) -> Result<()> {
        let subscribing = self.subscriber.close().await;
        let publishing = self.publisher.close().await;
        subscribing.and(publishing)
    }
}

/// Publishing through the [`AmqpPublisher`]: besides the errors of
/// [`Publisher::publish`], a payload over [`AmqpConfig::max_payload`], a
/// confirm timeout, or broker failures after reconnecting gave up; on error
/// in a batch the messages before the first unconfirmed one are stored.
#[async_trait]
impl Publisher for AmqpBroker {
    async fn publish(&self, topic: &str, message: Message) -> Result<()> {
        let published = self.publisher.publish(topic, message).await;
        published.map_err(|e| self.subscriber.leaderless().explain(topic, e))
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        let published = self.publisher.publish_batch(topic, messages).await;
        published.map_err(|e| self.subscriber.leaderless().explain(topic, e))
    }
}

/// Subscribing through the [`AmqpSubscriber`]: the broker may refuse the
/// declarations (an existing queue of another type, a reserved `amq.` name,
/// missing permissions).
#[async_trait]
impl Subscriber for AmqpBroker {
    async fn provision(&self, subscription: &Subscription) -> Result<()> {
        self.subscriber.provision(subscription).await
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        self.subscriber.subscribe(subscription).await
    }

    fn messaging_system(&self) -> &'static str {
        MESSAGING_SYSTEM
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<courier_core::telemetry::Lag> {
        self.subscriber.lag(topic, group).await
    }
}
