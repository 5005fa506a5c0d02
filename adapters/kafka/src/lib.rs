//! courier-kafka: the Kafka adapter for courier, on rdkafka (librdkafka).
//!
//! # Mapping
//!
//! - **Topic → Kafka topic.** Created with the admin API on first publish,
//!   provision or subscribe unless [`KafkaConfig::create_topics`] is off
//!   (then a missing topic is [`Error::TopicNotFound`]), with
//!   [`KafkaConfig::partitions`] partitions (1 by default, see below) and
//!   [`KafkaConfig::replication_factor`]. Uses racing for a topic this
//!   connection does not know yet share one look-up (and creation); a
//!   failed one is reported to all of them and tried again by the next use.
//! - **Group → Kafka consumer group.** Each subscription is one member of
//!   the group: subscriptions of the same group share the topic's
//!   partitions (competing consumers), each group gets every message.
//! - **Publish** uses the idempotent producer (`enable.idempotence=true`,
//!   `acks=all`) and returns when the delivery report arrives: the record
//!   is written to every in-sync replica. `publish_batch` hands the whole
//!   batch to rdkafka, then awaits every report. The message key is the
//!   record key, so a key always lands on the same partition (partitioner
//!   `murmur2_random`, the Java client's); unkeyed messages are spread.
//! - **Message fields**: the record key is the courier key; the id, content
//!   type, timestamp (also the record's timestamp), correlation and
//!   causation ids and the user's headers are record headers
//!   ([`courier_core::adapter::wire`]) and come back exactly. A record with
//!   the `courier-id` and `courier-timestamp-ms` headers (courier writes both
//!   on every record) is courier's; one from another producer gets the id
//!   `<topic>-<partition>-<offset>` and the record's timestamp, and its
//!   `courier-` headers are not trusted: they are left out with a debug log
//!   line ([`courier_core::adapter::origin`], the policy every adapter
//!   applies). A header courier cannot carry (a value that is not UTF-8, a
//!   name or value its header rules refuse) is left out the same way on
//!   every record. One courier cannot represent at all (a key that is not
//!   UTF-8, a courier record whose own fields cannot be read) is copied to
//!   the dead-letter topic as it is, with the reason, and settled; while
//!   the copy is refused the record stays unsettled and the copy is sent
//!   again with the dead-letter backoff
//!   ([`dead_letter_retry_delays`](courier_core::adapter::dead_letter_retry_delays)),
//!   until it is taken or the partition is revoked.
//!
//! # Partitions and order
//!
//! Kafka orders messages per partition. With one partition (the default)
//! a topic keeps every message in publish order, keyed or not, which is
//! what the in-memory broker and the other adapters do; but only one
//! member of a group then receives anything. With more partitions the
//! members share the load and order holds per key only.
//!
//! # Settling: the commit watermark
//!
//! Kafka keeps one committed position per partition and group, so courier
//! tracks, per partition, which fetched offsets are settled, and commits the
//! lowest offset that is not (or one past the last fetched). Deliveries may
//! be settled in any order and handled concurrently across partitions and
//! keys: an ack of a later message never commits past an earlier message
//! that is nacked, waiting for redelivery, or still being handled.
//!
//! - **`ack`** marks the offset settled and returns; the position is
//!   committed in the background every [`KafkaConfig::commit_interval`]
//!   (100 ms by default), and synchronously when a partition is revoked and
//!   when the subscription ends (close or dropped stream). Kafka can only
//!   record an ack as part of that cumulative position, so a consumer
//!   process that dies before the next commit has its recent acks
//!   delivered again: at least once, never lost. One commit request carries
//!   every ack of its interval, so consuming (with or without the consumer
//!   runtime) is not bounded by a commit round trip per message. The
//!   background thread waits for each commit's answer before it sends the
//!   next, so commits never pile up on the group coordinator's connection,
//!   where they would hold back the member's heartbeats past the session
//!   timeout (and make the group take the member's partitions away) on a
//!   broker that is slower per commit than the interval.
//! - Offsets settled above the committed position travel as the commit's
//!   **metadata**, and the partition's next owner skips them, so a message
//!   acked after an earlier nacked one is not delivered again after a
//!   rebalance or restart. Because some brokers drop commit metadata
//!   (tansu 0.6 does), a partition given up with such offsets also writes
//!   them as a record to the companion topic `<topic>.courier-settled`
//!   (created like any topic, with as many partitions) and commits that
//!   record's offset for the group in the same commit request; the next
//!   owner reads the commit's metadata, or, when it is empty and the
//!   companion topic exists, that record (waiting at most 3 s: the group
//!   waits for the member meanwhile).
//!   The text names the position it belongs to, so a stale record is never
//!   applied. Only the final commit of a partition (revocation, end of the
//!   subscription) writes the record: a consumer process that dies has its
//!   acks above the position delivered again on such a broker. With
//!   [`KafkaConfig::create_topics`] off, no companion topic is created and
//!   those acks come back too: at least once, never skipped.
//! - **`Nack::Requeue`** and a dropped delivery give the message back to
//!   this subscription: it is delivered again before new records, with a
//!   higher [`Delivery::delivery_count`](courier_core::Delivery::delivery_count).
//!   **`RequeueAfter(d)`** does so after `d`. **`DeadLetter`** publishes the
//!   copy from [`DeadLetter::to_message`](courier_core::DeadLetter::to_message)
//!   to the dead-letter topic (created like any topic), waits for its
//!   delivery report, then settles the original; if that publish fails the
//!   original is given back and the nack returns the error. The consumer
//!   runtime provisions the consumer's group on the dead-letter topic
//!   before it starts (a group created later would start after the dead
//!   letters), and holds the record while it publishes a refused copy
//!   again with a backoff (see
//!   [the runtime's dead letters](courier_core::runtime#dead-letters)).
//! - The delivery count is counted by this consumer: a message delivered
//!   again after a rebalance or restart starts at 1 (Kafka does not count
//!   deliveries).
//!
//! # Rebalances and the end of a subscription
//!
//! When the group takes partitions away from a subscription (a member
//! joined or left), the subscription stops handing out their records at
//! once, waits up to [`KafkaConfig::revoke_timeout`] for the deliveries it
//! already handed out to be settled, commits the final positions, and lets
//! the partitions go. A delivery of a revoked partition settled later
//! fails with [`PartitionRevoked`]: the next owner delivers it again.
//!
//! Dropping the stream ends the subscription the same way: nothing more is
//! handed out, records fetched ahead are given back, and the deliveries
//! already out may still be settled (for up to the revoke timeout) before
//! the final commit, which is what a graceful shutdown of the courier
//! runtime relies on. [`KafkaBroker::close`] does not wait for them: they
//! come back to the group. Before leaving, a member lets a group join that
//! is under way complete (for up to 5 s).
//!
//! [`KafkaBroker::close`] also waits for each subscription's detached
//! tasks: dead-letter copies of records courier cannot decode are
//! published; delayed redeliveries
//! ([`Nack::RequeueAfter`](courier_core::Nack::RequeueAfter)) still waiting
//! are dropped, since their records were not committed and come back to
//! the group. All of closing (final commits, tasks, the producer's flush)
//! is bounded by [`KafkaConfig::publish_timeout`]; past it `close` returns
//! [`Error::Timeout`] naming `close`, never
//! `Ok`.
//!
//! # Flow
//!
//! A subscription hands out at most [`Subscription::prefetch`] unsettled
//! deliveries. A thread per subscription polls rdkafka, decodes records and
//! keeps a bounded buffer ahead of the stream (twice the prefetch, at least
//! 64). When the stream does not take them, the thread stops polling
//! (rdkafka's own prefetch queue is bounded by its
//! `queued.max.messages.kbytes`); only when the buffer stays full for 3 s
//! does it pause fetching, so that rebalances are still served. Pausing
//! drops the records rdkafka had fetched (they are fetched again), which is
//! why it is not the everyday flow control. Fetching resumes once the
//! stream has taken half the buffer, and whenever the group hands the
//! subscription its partitions again (rdkafka keeps an application's
//! pause across a rebalance; courier resumes the new assignment, or a
//! partition given back while paused would never be fetched). Once rdkafka holds
//! `queued.min.messages` records it fetches again after
//! `fetch.queue.backoff.ms`, which courier sets to 50 ms (rdkafka's 1 s
//! idled a consumer draining a backlog faster than that queue lasts).
//!
//! # Provisioning and start position
//!
//! [`Subscriber::provision`] (and `subscribe`, which provisions first)
//! makes the group exist: for every partition where the group has no
//! committed offset it commits the partition's current end
//! ([`StartPosition::Latest`](courier_core::StartPosition::Latest)) or
//! beginning (`Earliest`). So a group receives every message published
//! after it was provisioned, even before it subscribes, and a group
//! provisioned again keeps its position. The consumers' `auto.offset.reset`
//! is `earliest`: it applies only to partitions without a committed offset,
//! which are partitions added after provisioning, whose messages are all
//! new to the group. Two processes provisioning the same new group at the
//! same instant may commit slightly different end offsets; messages
//! published between the two are then skipped by that group, so provision
//! new groups from one place (a deployment step) when that matters.
//!
//! # Unroutable publishes
//!
//! None: a topic keeps its records (up to its retention) whether or not a
//! group exists, and a group provisioned later with
//! [`StartPosition::Earliest`](courier_core::StartPosition::Earliest)
//! receives them. A publish to a topic without groups therefore returns
//! `Ok` once the broker confirmed it. The shared URL option `unroutable`
//! is accepted and checked (`error` or `drop`) and has no effect, so one
//! URL works on every broker. A topic that does not exist and may not be
//! created ([`KafkaConfig::create_topics`] off) is
//! [`Error::TopicNotFound`].
//!
//! # Request/reply
//!
//! [`Broker::request`](courier_core::Broker::request) produces the request
//! to the topic like any record, so a responder is an ordinary consumer
//! group of the topic. Each connection has a reply topic of its own
//! (`courier-replies.<id>`, one partition, created on its first request)
//! that it reads by assignment from the beginning: no consumer group, so
//! no rebalancing and no join delay. Replies are records: stored, and read
//! once by their requester while it runs. Kafka cannot tell whether anyone
//! consumes a topic, so a request nobody answers times out (only a topic
//! that is missing and may not be created is
//! [`RequestError::NoResponders`](courier_core::request::RequestError::NoResponders)).
//!
//! [`KafkaBroker::close`] stops the thread reading the reply topic
//! (waiting up to 5 s for it to end; past that `close` returns
//! [`Error::Timeout`]); requests still waiting end at once with the reply
//! path closed. With [`KafkaConfig::delete_reply_topic`] (URL option
//! `delete_reply_topic=true`) it then deletes the topic (each admin
//! request bounded by [`KafkaConfig::connect_timeout`]); a topic that
//! cannot be deleted (the broker is unreachable or refuses) is logged as a
//! warning and does not fail the close, since the connection's own
//! resources are released all the same and nobody waits for what the
//! topic holds.
//!
//! Deleting is off by default: against the Kafka-protocol broker courier
//! is tested on (tansu 0.6), deleting a reply topic made the librdkafka
//! (2.12.1) clients of *other* connections in the same process, a
//! responder's consumer among them, crash with a segmentation fault in
//! librdkafka's metadata update after a fetch
//! (`rd_kafka_metadata_update_op`). Turn it on where the cluster is known
//! not to provoke that. Without it, and for processes that died without
//! closing, let the broker's retention, or an operator, remove old
//! `courier-replies.*` topics. A responder does not
//! create a reply topic that is missing: a reply to a requester that
//! closed is dropped (the responder's `reply` returns `Ok`), unless that
//! responder still knows the topic from an earlier reply, in which case
//! the produce fails or, on a broker that creates topics on first use,
//! creates it again.
//!
//! Replies are records, so a broker that restarts, or a connection that
//! is reset, loses none: the reader resumes at its position once rdkafka
//! has reconnected, and a reply stored meanwhile reaches its request if it
//! still waits (later, it is counted as late). A request whose produce
//! failed during the outage returns
//! [`RequestError::Transport`](courier_core::request::RequestError::Transport)
//! or times out; the same handle is answered again once the broker is back
//! (the conformance case `request_survives_a_broker_restart` holds this).
//!
//! # URL
//!
//! `kafka://host:port[,host:port...][?options]`: the bootstrap servers as
//! written, then options, percent-decoded ([`KafkaConfig::from_url`];
//! durations as `500ms`, `10s`, `2m` or plain seconds):
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `connect_timeout` | [`KafkaConfig::connect_timeout`]: first metadata fetch, and each metadata, offset and admin request | 10 s |
//! | `client_name` (or `client_id`) | [`KafkaConfig::client_id`], rdkafka's `client.id` | `courier` |
//! | `publish_timeout` | [`KafkaConfig::publish_timeout`]: the wait for the broker's confirmation, retries included; also the bound on `provision`, `subscribe` and `close` as a whole | 30 s |
//! | `partitions` | [`KafkaConfig::partitions`] of the topics courier creates | 1 |
//! | `replication_factor` | [`KafkaConfig::replication_factor`] of the topics courier creates | 1 |
//! | `create_topics` | [`KafkaConfig::create_topics`]: `true` or `false` | `true` |
//! | `delete_reply_topic` | [`KafkaConfig::delete_reply_topic`]: `true` or `false` | `false` |
//! | `session_timeout` | [`KafkaConfig::session_timeout`]: how long the group waits for a silent member's heartbeat (1 ms to 1 h) | 10 s |
//! | `unroutable` | `error` or `drop`: checked, no effect (see [Unroutable publishes](#unroutable-publishes)) | `error` |
//!
//! Any other option is an [`Error::InvalidUrl`] naming it; so are
//! credentials in the URL (SASL and TLS are rdkafka properties,
//! [`KafkaConfig::rdkafka`], whose secret values `Debug` masks). This crate
//! builds librdkafka with zlib only; TLS (`security.protocol=ssl` or
//! `sasl_ssl`) and SCRAM need it built with OpenSSL, which an application
//! asks for by depending on the same `rdkafka` with its `ssl` (or
//! `ssl-vendored`) feature, and Kerberos with `gssapi`: Cargo builds one
//! rdkafka with the features of both. A default
//! prefetch is not an option: each [`Subscription`] carries its own.
//!
//! # Errors and reconnection
//!
//! [`KafkaBroker::connect`] fetches the cluster metadata within
//! [`KafkaConfig::connect_timeout`] and fails with [`Error::Connect`]
//! (refused, unreachable, timed out, protocol). Afterwards rdkafka
//! reconnects by itself: a publish during an outage waits for the broker up
//! to [`KafkaConfig::publish_timeout`] (then [`Error::Timeout`]), consumers
//! resume from their positions. A fatally failed idempotent producer (the
//! broker lost its producer state), or one whose records the broker refuses
//! for reasons a new producer id cures, is replaced by a new one. Payloads over
//! [`KafkaConfig::max_payload`] fail with [`Error::PayloadTooLarge`] before
//! anything is sent.
//!
//! # What tansu lacks
//!
//! courier's tests run on tansu 0.6, an Apache-Kafka-compatible broker
//! storing in SQLite. Where it differs from Apache Kafka, and what this
//! adapter does about it:
//!
//! - **Commit metadata** is accepted but returned empty: the companion
//!   topic above keeps the settled offsets instead. The metadata path
//!   itself is tested on librdkafka's mock cluster, which keeps metadata
//!   like Apache Kafka (`tests/mock_cluster.rs`).
//! - **Group membership**: when the member it chose as the group's leader
//!   leaves in the middle of a join, the group waits for an assignment that
//!   never comes. Members therefore let a join under way complete before
//!   they leave. Likewise a member whose session timed out stays in the
//!   group as the owner of its partitions, so the rebalance callbacks keep
//!   their broker requests short. Under heavy load tansu also answers
//!   slowly enough at times that a 10 s connect can time out.
//! - **Idempotent producers** are refused (an unknown broker error) after
//!   the broker restarted: such a producer is replaced by a new one (new
//!   producer id), as after a fatal error. The record that met the error
//!   fails with a retryable error.
//! - **Record size limits** are not enforced by the broker; courier's
//!   [`KafkaConfig::max_payload`] and rdkafka's `message.max.bytes` are.
//! - **Topics are not created on first use**; courier creates them.
//!
//! # Observability
//!
//! Spans, `traceparent` headers and metrics come from core
//! ([`courier_core::telemetry`]); `messaging.system` is `kafka`, and
//! process spans carry `messaging.destination.partition.id` and
//! `messaging.kafka.offset`. Lag ([`Subscriber::lag`]) is, per partition,
//! the high watermark minus the group's committed offset (the low
//! watermark where it committed none), summed: exact for what the group
//! committed, so it trails acks by up to the commit interval. rdkafka
//! reports brokers going down but never coming back, so health follows the
//! outcome of the last publish or lag read: unusable after one that found
//! the cluster unreachable, until one succeeds.
//!
//! # Examples
//!
//! ```no_run
//! use courier_core::prelude::*;
//! use courier_kafka::KafkaBroker;
//!
//! # async fn run() -> courier_core::Result<()> {
//! let kafka = KafkaBroker::connect("kafka://localhost:9092").await?;
//! let mut orders = kafka.subscribe(Subscription::new("orders", "billing")).await?;
//! kafka.publish("orders", Message::new("order 1").with_key("customer-7")).await?;
//! let delivery = orders.next().await.expect("stream open")?;
//! delivery.ack().await?;
//! kafka.close().await?;
//! # Ok(()) }
//! ```

mod assignment;
mod client;
mod config;
mod consumer;
mod delivery;
mod error;
#[cfg(test)]
mod first_publish_tests;
mod flow;
mod foreign;
mod group;
mod lag;
mod partition;
mod publisher;
mod reply_cleanup;
mod request;
mod settled;
mod subscriber;
mod topics;
mod watermark;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use courier_core::resilience::deadline_after;

use courier_core::{
    Broker, Close, DeliveryStream, Error, Message, Publisher, Result, Subscriber, Subscription,
    async_trait,
};
use parking_lot::Mutex;
use rdkafka::admin::AdminClient;
use rdkafka::consumer::{BaseConsumer, Consumer};

pub use config::{KafkaConfig, SCHEMES, URL_OPTIONS};
pub use error::PartitionRevoked;

use client::{CourierContext, blocking, client_config};
use publisher::Producer;
use subscriber::Running;
use topics::Topics;

/// A connection to a Kafka cluster, as publisher and subscriber.
///
/// Cheap to clone; clones share the producer and the subscriptions.
#[derive(Debug, Clone)]
pub struct KafkaBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Arc<KafkaConfig>,
    producer: Arc<Producer>,
    subscriptions: Mutex<Vec<Running>>,
    closed: AtomicBool,
    liveness: lag::Liveness,
    /// The reply topic of this connection's requests.
    inbox: request::Inbox,
}

impl KafkaBroker {
    /// Connects to `kafka://host:port[,host:port...][?options]` (see
    /// [URL](crate#url)).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a malformed URL; [`Error::Connect`] naming
    /// the URL and the kind (refused, unreachable, timed out, protocol)
    /// when no bootstrap server answers within
    /// [`KafkaConfig::connect_timeout`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(KafkaConfig::from_url(url)?).await
    }

    /// Connects with `config`.
    ///
    /// # Errors
    ///
    /// As [`KafkaBroker::connect`].
    pub async fn connect_with(config: KafkaConfig) -> Result<Self> {
        let url = format!("kafka://{}", config.bootstrap_servers);
        let config = Arc::new(config);
        let create = |e| error::connect_error(&url, None, Some(e));
        let metadata: BaseConsumer<CourierContext> = client_config(&config, [])
            .create_with_context(CourierContext::default())
            .map_err(create)?;
        let metadata = Arc::new(metadata);
        probe(&url, &config, &metadata).await?;
        let admin: AdminClient<CourierContext> = client_config(&config, [])
            .create_with_context(CourierContext::default())
            .map_err(create)?;
        let topics = Arc::new(Topics::new(config.clone(), admin, metadata));
        let producer = Producer::new(config.clone(), topics).map_err(create)?;
        Ok(KafkaBroker {
            inner: Arc::new(Inner {
                config,
                producer: Arc::new(producer),
                subscriptions: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                liveness: lag::Liveness::default(),
                inbox: request::Inbox::default(),
            }),
        })
    }

    /// This connection as a run-time chosen [`Broker`].
    pub fn into_broker(self) -> Broker {
        let this = Arc::new(self);
        Broker::new("kafka", this.clone(), this.clone()).with_requester(this)
    }

    /// The settings in use.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("kafka connection"));
        }
        Ok(())
    }
}

/// Fetches the cluster metadata, failing early once rdkafka reports every
/// bootstrap server down, and at the latest after the connect timeout.
async fn probe(
    url: &str,
    config: &KafkaConfig,
    client: &Arc<BaseConsumer<CourierContext>>,
) -> Result<()> {
    const ATTEMPT: Duration = Duration::from_millis(500);
    let deadline = deadline_after(Instant::now(), config.connect_timeout);
    loop {
        let attempt = client.clone();
        let outcome = blocking(move || {
            let outcome = attempt.fetch_metadata(None, ATTEMPT).map(drop);
            // Serve the client's events: connection errors reach the
            // context (and say what failed) only through them.
            let _ = attempt.poll(Duration::ZERO);
            outcome
        })
        .await;
        let last_error = match outcome {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let (transport, all_down) = client.context().transport_error();
        if (all_down && transport.is_some()) || Instant::now() >= deadline {
            return Err(error::connect_error(url, transport, Some(last_error)));
        }
    }
}

/// Closing the connection: every subscription commits its final positions
/// and leaves its group (deliveries still unsettled come back to the
/// group), streams end, queued publishes are flushed.
#[async_trait]
impl Close for KafkaBroker {
    fn health(&self) -> courier_core::telemetry::Health {
        self.inner
            .liveness
            .health(self.inner.closed.load(Ordering::Acquire))
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.inbox.stop();
        // Subscriptions commit and leave their groups while the reply
        // reader stops and the reply topic is deleted, then queued records
        // are flushed: all of it within the publish timeout, past which
        // the close is reported incomplete.
        let subscriptions = std::mem::take(&mut *self.inner.subscriptions.lock());
        let after = self.inner.config.publish_timeout;
        courier_core::error::within("close", after, async {
            let (stopped, replies) = futures::join!(
                futures::future::join_all(subscriptions.into_iter().map(|r| r.stop(after))),
                self.inner.inbox.close(
                    &self.inner.producer.topics,
                    self.inner.config.delete_reply_topic,
                    reply_cleanup::READER_STOP,
                ),
            );
            let flushed = self.inner.producer.close().await;
            stopped
                .into_iter()
                .collect::<Result<()>>()
                .and(replies)
                .and(flushed)
        })
        .await
    }
}

/// Publishing: besides the errors of [`Publisher::publish`],
/// [`Error::TopicNotFound`] when the topic is missing and may not be
/// created, and [`Error::Timeout`] when the broker did not confirm within
/// [`KafkaConfig::publish_timeout`].
#[async_trait]
impl Publisher for KafkaBroker {
    async fn publish(&self, topic: &str, message: Message) -> Result<()> {
        self.publish_batch(topic, vec![message]).await
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        let outcome =
            courier_core::adapter::instrumented_publish("kafka", topic, messages, |messages| {
                self.inner.producer.publish(topic, messages)
            })
            .await;
        self.inner.liveness.record(&outcome);
        outcome
    }
}

#[async_trait]
impl Subscriber for KafkaBroker {
    async fn provision(&self, subscription: &Subscription) -> Result<()> {
        self.check_open()?;
        courier_core::error::within(
            "provision",
            self.inner.config.publish_timeout,
            subscriber::provision(&self.inner.config, &self.inner.producer, subscription),
        )
        .await
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        self.check_open()?;
        let (stream, running) = courier_core::error::within(
            "subscribe",
            self.inner.config.publish_timeout,
            subscriber::subscribe(&self.inner.config, &self.inner.producer, subscription),
        )
        .await?;
        let mut subscriptions = self.inner.subscriptions.lock();
        subscriptions.retain(|r| r.flow.strong_count() > 0);
        subscriptions.push(running);
        Ok(stream)
    }

    fn messaging_system(&self) -> &'static str {
        "kafka"
    }

    /// Each request to the cluster waits at most
    /// [`KafkaConfig::connect_timeout`]. The read runs on a task of its own,
    /// so its outcome reaches [`Close::health`] even when the caller stopped
    /// waiting.
    async fn lag(&self, topic: &str, group: &str) -> Result<courier_core::telemetry::Lag> {
        self.check_open()?;
        let inner = self.inner.clone();
        let (topic, group) = (topic.to_owned(), group.to_owned());
        tokio::spawn(async move {
            let config = &inner.config;
            let outcome = lag::lag(config, &topic, &group, config.connect_timeout).await;
            inner.liveness.record(&outcome);
            outcome
        })
        .await
        .map_err(|_| Error::Closed("kafka lag read"))?
    }
}

#[async_trait]
impl courier_core::request::Requester for KafkaBroker {
    /// Produces the request to `topic` (waiting for its delivery report)
    /// and waits for the reply on this connection's reply topic. Kafka
    /// cannot tell whether anyone consumes a topic: a request nobody
    /// answers times out, except that a missing topic courier may not
    /// create ([`KafkaConfig::create_topics`](crate::KafkaConfig::create_topics))
    /// is [`RequestError::NoResponders`](courier_core::request::RequestError::NoResponders).
    async fn request(
        &self,
        topic: &str,
        message: Message,
        timeout: std::time::Duration,
    ) -> std::result::Result<Message, courier_core::request::RequestError> {
        self.check_open()?;
        let producer = &self.inner.producer;
        let inbox = self.inner.inbox.get(&self.inner.config, producer).await?;
        courier_core::request::exchange(
            &inbox.pending,
            topic,
            &inbox.topic,
            message,
            timeout,
            |request| async move {
                producer
                    .publish(topic, vec![request])
                    .await
                    .map_err(|e| match e {
                        Error::TopicNotFound(_) => {
                            courier_core::request::RequestError::NoResponders {
                                topic: topic.to_owned(),
                            }
                        }
                        e => courier_core::request::RequestError::Transport(e),
                    })
            },
        )
        .await
    }

    /// Produces the reply to the requester's reply topic. A reply topic
    /// that no longer exists (its requester closed) is not created again:
    /// the reply is dropped, and `Ok`.
    async fn reply(&self, request: &Message, reply: Message) -> Result<()> {
        let topic = courier_core::request::headers::reply_address_of(error::BROKER, request)?;
        self.check_open()?;
        if !self.inner.producer.topics.exists(topic).await? {
            tracing::debug!(topic, "reply dropped: its reply topic is gone");
            return Ok(());
        }
        self.inner.producer.publish(topic, vec![reply]).await
    }

    fn late_replies(&self) -> u64 {
        self.inner.inbox.late_replies()
    }
}
