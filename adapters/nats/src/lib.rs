//! courier-nats: the NATS JetStream adapter for courier.
//!
//! # Mapping
//!
//! - **Topic → stream.** Each topic is a JetStream stream whose one subject
//!   is the topic itself; the stream is named after the topic with `.`
//!   replaced by `_` (`orders.placed` → `orders_placed`), because stream
//!   names cannot hold `.`. Streams are created on first publish or
//!   provision, with [`NatsConfig::storage`] (file by default) and
//!   [`NatsConfig::duplicate_window`]. An existing stream of that name whose
//!   subjects do not include the topic is an error, never silently shared.
//! - **Group → durable pull consumer** on that stream, named after the group
//!   the same way. Streams of the same group pull from the one consumer
//!   (competing); each group has its own (fan-out).
//!   [`StartPosition::Latest`](courier_core::StartPosition::Latest) creates it
//!   with deliver policy `new`, `Earliest` with `all`: JetStream keeps history,
//!   so a new group can start from the beginning of the stream.
//! - **Publish** waits for the JetStream publish ack; `publish_batch` sends
//!   all messages, then waits for all acks. `Nats-Msg-Id` is the courier
//!   message id, so a message published again within the duplicate window
//!   (2 minutes by default) is stored once. A publish whose acks are
//!   awaited when the client loses its connection fails at once with an
//!   [`Error::Broker`](courier_core::Error::Broker) of kind
//!   [`Unavailable`](courier_core::BrokerErrorKind::Unavailable) (the acks
//!   cannot come over the new connection): some of its messages may be
//!   stored, and publishing them again stores them once.
//! - **Message fields** (id, key, content type, timestamp, correlation and
//!   causation ids, user headers) travel as NATS headers
//!   ([`courier_core::adapter::wire`]; the id as `Nats-Msg-Id`) and come back
//!   exactly. Values NATS would alter (empty, or with leading or trailing
//!   white space) travel quoted. A message with `Nats-Msg-Id` and the
//!   `courier-timestamp-ms` header (courier writes both on every message)
//!   is courier's; any other comes from another producer, keeps its
//!   `Nats-Msg-Id` as id, or gets `<topic>-<stream sequence>`, and its
//!   `courier-` headers are not trusted: they are left out with a debug log
//!   line ([`courier_core::adapter::origin`], the policy every adapter
//!   applies), as is any header courier cannot carry. A courier message
//!   whose own fields cannot be read goes to the dead-letter topic with the
//!   reason and its id. If the copy is refused, the original is NAKed with
//!   the dead-letter backoff for its delivery count
//!   ([`dead_letter_retry_delay`](courier_core::adapter::dead_letter_retry_delay)),
//!   so the next try comes after a growing delay, never in a loop (with
//!   [`NatsConfig::max_deliver`] set, the server stops after that many).
//! - **Settlement** is confirmed by the server (see
//!   [Settlement](crate#settlement)). `Nack::Requeue` is a NAK,
//!   `RequeueAfter(d)` a NAK with delay, `DeadLetter` publishes the copy to
//!   the dead-letter topic (confirmed) and then terminates the original
//!   (`+TERM`). A delivery dropped unsettled is NAKed. The consumer runtime
//!   provisions the consumer's group on the dead-letter topic before it
//!   starts (a durable consumer created later would start after the dead
//!   letters), and holds a message whose copy is refused (its ack wait
//!   restarted with `+WPI`) while it publishes the copy again with a
//!   backoff (see [the runtime's dead letters](courier_core::runtime#dead-letters)).
//! - **Flow**: a stream pulls at most [`Subscription::prefetch`] messages at
//!   a time and never holds more unsettled than that; the consumer's `max_ack_pending`
//!   ([`NatsConfig::max_ack_pending`]) bounds the group.
//!
//! # Settlement
//!
//! `Delivery::ack` sends `+ACK` to the message's reply subject as a
//! request, and its future resolves `Ok` only once the server has answered,
//! which it does after its consumer has processed the ack: the message is
//! then acknowledged for the whole group and is not delivered again, even
//! if this process dies right after (what async-nats calls `double_ack`).
//! An ack the server does not answer within
//! [`NatsConfig::request_timeout`] is an [`Error::Timeout`](courier_core::Error::Timeout):
//! it may or may not have been recorded, and the message may come back.
//! An ack awaiting its answer when the client loses its connection (a
//! server restart, a reset link) does not wait that long: the answer
//! cannot come over the new connection, so the ack fails at once with an
//! [`Error::Broker`](courier_core::Error::Broker) of kind
//! [`Unavailable`](courier_core::BrokerErrorKind::Unavailable), its outcome
//! unknown as after a timeout, and a consumer goes on with its next
//! message instead of stalling for the request timeout.
//! The server keeps consumer state in memory and writes it to disk in the
//! background, so a server crash right after an ack can still redeliver
//! the message: at least once, as everywhere in courier. NAKs and `+TERM`
//! are confirmed the same way.
//!
//! Settlements are pipelined, never serialised: each is its own request
//! over the connection's one shared reply subscription (no subscription per
//! ack), sent as soon as it is made, and the confirmations are awaited
//! independently. `N` deliveries settled concurrently (a consumer runtime
//! at concurrency `N`, or `for_each_concurrent(N, ..)` over the stream)
//! cost about one round trip, not `N`. A loop that awaits each ack before
//! taking the next delivery still waits one round trip per message: that
//! wait is what an `Ok` ack promises.
//!
//! A subscription pulls at most the room its prefetch leaves
//! (`prefetch - unsettled`) in one pull request at a time. While messages
//! it pulled still wait to be taken from the stream, it pulls again only
//! once half its prefetch is free (or one message, with a prefetch of 1):
//! a consumer working through a backlog pulls in batches of half its
//! prefetch, not one message per settlement, which cost the server a pull
//! request and its end for every message, and the messages still waiting
//! keep handlers busy while the next pull is on its way. Once nothing
//! waits, any room is pulled at once, so handlers holding most of the
//! prefetch get the next message as soon as one of them settles.
//! - **Delivery count** comes from the message's JetStream metadata.
//!
//! # Ordering
//!
//! A stream keeps publish order. One subscription receives its group's
//! messages in stream order; a NAKed message is redelivered after messages
//! already pulled, so per-key order across redeliveries is the consumer
//! runtime's job (its key lanes retry in place).
//!
//! # Reconnection
//!
//! async-nats reconnects by itself. Pull loops renew their requests after a
//! reconnect, durable consumers and file-stored streams survive a server
//! restart, and a publish made during an outage either is acknowledged after
//! the reconnect or fails with a timeout: never a silent drop. A pull that
//! fails waits before pulling again with courier's jittered backoff
//! ([`courier_core::adapter::backoff`], 50 ms doubling up to 2 s), so that
//! the consumers of a restarted server do not all pull at once.
//!
//! Messages a subscription pulled before a connection loss, and that
//! still wait in its stream when it is read while the client is not
//! connected again to the same server (that server restarted, the client
//! reconnected to another server of a cluster, or it is still
//! reconnecting), are given back instead of handed out: each is NAKed (in
//! pull order, without waiting for an answer) and pulled again once its
//! NAK is on its way, so it arrives once more, with its delivery count
//! raised by one when the server still tracked it, and possibly after
//! messages the server had not delivered yet. A restarted server may have
//! lost its consumer's record of those deliveries (it writes that record
//! behind them, and a restart right after a pull can lose it); it then
//! answers no ack of theirs, and a reader acking each message before
//! taking the next would wait out [`NatsConfig::request_timeout`] once for
//! every message its prefetch held. Once reconnected to the same server (a
//! network blip), the held messages are handed out as they are: that
//! server still tracks them. Deliveries already handed out keep their
//! reply subjects: an ack of one after such a restart ends in
//! [`Error::Timeout`](courier_core::Error::Timeout) (outcome unknown), at
//! most once per unsettled delivery. Each give-back counts towards
//! [`NatsConfig::max_deliver`].
//!
//! # Closing
//!
//! `close` ends the pull loops (each within two pull expiries plus a
//! second: a loop stops at once unless a pull is open, and then waits for
//! that pull's end at most half a second past its expiry, also when a
//! server restart lost it), NAKs the deliveries still unsettled (for up to
//! [`NatsConfig::request_timeout`]), waits for the
//! connection's detached tasks (the end of the request inbox, NAKs of dropped
//! deliveries, dead-letter copies of undecodable messages) for up to
//! [`NatsConfig::request_timeout`], and drains the client for up to
//! [`NatsConfig::request_timeout`] more: with the defaults, at most
//! `2 × pull_expiry + 1 s + 3 × request_timeout` in all. When a step does
//! not finish within its bound, `close` still goes on with the next and
//! then returns [`Error::Timeout`](courier_core::Error::Timeout) naming
//! `close`, never `Ok`.
//!
//! # Observability
//!
//! Spans, `traceparent` headers and metrics come from core
//! ([`courier_core::telemetry`]); `messaging.system` is `nats`. Lag
//! ([`Subscriber::lag`]) is the durable consumer's `num_pending` +
//! `num_ack_pending`, exact as the server counts it. Health follows the
//! client's connection state (usable only while connected).
//!
//! # URL
//!
//! `nats://[user:password@|token@]host[:port][?options]`, or `tls://` to
//! require TLS. User, password and token are percent-decoded; the URL in
//! errors has them masked. Options ([`NatsConfig::from_url`]; durations as
//! `500ms`, `10s`, `2m` or plain seconds):
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `connect_timeout` | [`NatsConfig::connect_timeout`] | 5 s |
//! | `client_name` (or `client_id`) | [`NatsConfig::client_name`], the name the server shows | `courier` |
//! | `publish_timeout` | [`NatsConfig::request_timeout`]: the bound on a publish call as a whole (stream declaration, sending, the JetStream acks), on a settlement as a whole (sending it, the server's confirmation, and the progress signal that holds a message while its dead-letter copy is retried) and on sending a reply, even when the connection takes nothing more; publishes and settlements end at once, as `Unavailable`, when the connection is lost; and the bound on `provision`, `subscribe` and `lag` as a whole | 10 s |
//! | `storage` | [`NatsConfig::storage`] of the streams courier creates: `file` or `memory` | `file` |
//! | `duplicate_window` | [`NatsConfig::duplicate_window`] of the streams courier creates | 2 min |
//! | `ack_wait` | [`NatsConfig::ack_wait`] of the consumers courier creates | 30 s |
//! | `max_deliver` | [`NatsConfig::max_deliver`] of the consumers courier creates | no limit |
//! | `max_ack_pending` | [`NatsConfig::max_ack_pending`] of the consumers courier creates | 10,000 |
//! | `unroutable` | `error` or `drop`: checked, no effect (see [Unroutable publishes](#unroutable-publishes)) | `error` |
//!
//! Any other option is an [`Error::InvalidUrl`](courier_core::Error::InvalidUrl) naming it. A default
//! prefetch is not an option: each [`Subscription`] carries its own.
//!
//! # Unroutable publishes
//!
//! None: the topic's stream keeps every message whether or not a durable
//! consumer exists, and a group created later with
//! [`StartPosition::Earliest`](courier_core::StartPosition::Earliest)
//! receives it. A publish to a topic without groups therefore returns `Ok`
//! once JetStream acknowledged it. The shared URL option `unroutable` is
//! accepted and checked (`error` or `drop`) and has no effect, so one URL
//! works on every broker. A subject that no stream captures (the topic's
//! stream was deleted after this connection created it) is not dropped
//! either: JetStream answers the publish with "no responders", and it
//! fails with an [`Error::Broker`](courier_core::Error::Broker) of kind
//! [`NotFound`](courier_core::BrokerErrorKind::NotFound) (the stream is
//! missing), whatever the option. The server answers "no responders" as
//! well in the seconds after a restart, before JetStream has restored its
//! streams: the adapter then looks the stream up, and only JetStream's
//! answer that the stream does not exist keeps `NotFound`. A publish whose
//! stream exists, or whose lookup fails or gets no answer within 2 s (a
//! quarter of [`NatsConfig::request_timeout`] when that is less), fails as
//! [`Unavailable`](courier_core::BrokerErrorKind::Unavailable), which is
//! retryable.
//!
//! # Request/reply
//!
//! Requests and replies use core NATS request/reply with inboxes, not
//! JetStream: [`Broker::request`] publishes the request to the topic's
//! request subject ([`request_subject`]: `_courier.request.<topic>`, which
//! no stream captures) with a reply subject in the connection's inbox
//! (`<inbox>.<request id>`, followed by a token of the request's fields
//! when they travel there, see below; one wildcard subscription per
//! connection, made on its first request; the request id is a counter of
//! the connection's requests, unique within its inbox). No task stands
//! between the inbox and a waiting request: the subscription's wake hands
//! each reply to its request as it arrives (a reply nobody waits for any
//! more is dropped and counted in [`Broker::late_replies`]). The request
//! id and the reply address travel only in the reply subject, and the
//! deadline only as the `dl` field (see below): none of them is written
//! into the request's headers on the way. Every subscription of the topic
//! also listens on that subject as a member of its group's queue group, so
//! a responder is an ordinary consumer of the topic and each request
//! reaches one member of one group; its reply goes over core NATS to the
//! reply subject.
//!
//! - When no subscription of the topic runs, the server answers with its
//!   no-responders status:
//!   [`RequestError::NoResponders`](courier_core::request::RequestError::NoResponders)
//!   at once.
//! - Requests and replies are delivered at most once: nothing stores them.
//!   A responder that dies while handling a request leaves its requester
//!   to its timeout; a responder that stops (shutdown) before handling a
//!   request it received, or nacks it, answers it at once with an error
//!   reply ([`RemoteErrorKind::Transient`](courier_core::request::RemoteErrorKind::Transient)),
//!   since it cannot come back. Retry on the requester's side
//!   ([`courier_core::resilience::Retry`]) where a request must get
//!   through.
//! - A request that travelled through JetStream instead (published with
//!   a reply address, or bridged from elsewhere) is answered the same way,
//!   over core NATS. Its `courier-reply-to` and `courier-request-id`
//!   headers are reserved ones, so a producer other than courier must
//!   write courier's message fields too (`Nats-Msg-Id` and
//!   `courier-timestamp-ms`) to be trusted with them; see Mapping.
//!
//! - **During a reconnect.** The client re-subscribes the inbox on the
//!   new connection by itself; the same handle sends requests again as
//!   soon as it is connected. A reply published while the requester was
//!   disconnected reaches nobody (core NATS keeps nothing), so its request
//!   ends in [`RequestError::Timeout`](courier_core::request::RequestError::Timeout).
//!   So does a request handed to the client just after the connection
//!   broke and before the client noticed: the client still reports itself
//!   connected, writes the request to the broken connection, and drops
//!   what that connection had not delivered when it replaces it (the
//!   conformance case `request_survives_connection_resets` sees the first
//!   request sent right after a reset time out, the next one answered).
//!   Since the client cannot tell such a request apart, courier does not
//!   fail it early; it times out. A request sent once the client knows it
//!   is disconnected waits in the client's queue and goes out on the new
//!   connection after the inbox is re-subscribed.
//!
//! Plain clients can answer or send courier requests: a NATS request to
//! `_courier.request.<topic>` is answered to its reply subject.
//! At-least-once publish/subscribe never uses core NATS.
//!
//! ## Request and reply headers
//!
//! Over core NATS, courier's own fields of a request or a reply travel
//! packed into one header, `courier-fields` (every NATS header costs the
//! client a map entry and allocations on both sides; one header per field
//! was most of courier's cost per round trip). Its value is `name=value;`
//! fields, each only when it says something: `id` (the message id), `ts`
//! (the timestamp in milliseconds since the Unix epoch, left out when it is
//! the id's own: a UUID v7 of that millisecond, as every `Message::new`),
//! `ct` (content type), `key`, `dl` (a request's deadline,
//! `courier-deadline-ms`), `corr` and `cause` (correlation and causation
//! ids). In values `%`, `;`, CR and LF are escaped as `%25`, `%3B`, `%0D`,
//! `%0A`; a reader ignores fields it does not know.
//!
//! **A request whose fields are all it has carries no header at all**: the
//! fields travel as the last token of its reply subject, in the same form
//! after `courier:`. A `request_json` of a body, for example, is published
//! with the reply subject
//! `<inbox>.<request id>.courier:id=0190b6b4-…;ct=application/json;dl=1700000005000;rf=1;`
//! and no header (one header cost async-nats more than the rest of a round
//! trip's client work). The responder replies to that subject as to any, so
//! plain responders answer it as they would any request, and a server that
//! lets responders publish only to the reply subjects they received
//! (`allow_responses`) lets the reply through. A request goes with the
//! `courier-fields` header instead when it has a key, a user header or
//! `traceparent`, or a field value that a subject token cannot hold
//! (anything but printable ASCII, or `.`, `;`, `%`, `*`, `>`): then its
//! reply subject is `<inbox>.<request id>`. A responder reads the
//! subject's fields only from a request without `courier-fields`.
//!
//! **The reply to a request without a header carries none either**, when
//! it has nothing but such fields (a successful reply to a `request_json`
//! does: its id, content type, correlation and causation ids): they travel
//! as the reply's own reply subject, the NATS message's reply field, which
//! a reply does not otherwise use (`courier:id=…;ct=…;corr=…;cause=…;`).
//! The reply still goes to the request's reply subject. The request asks
//! for this with the field `rf=1` in its token; a responder built before
//! it ignores the field and replies with `courier-fields`, which every
//! requester reads: this step needs no upgrade order of its own. An error
//! reply, and a reply with a key, a user header or `traceparent`, keep the
//! header.
//!
//! Everything else travels as its own header, as on JetStream: user
//! headers, `traceparent`, and the request/reply headers of a reply that
//! has them (`courier-request-id` when the request carried one, as a
//! request stored in JetStream does; `courier-reply-status: error`,
//! `courier-error-kind` and `courier-error-reason` on an error reply). **A
//! successful reply carries no status header**: a reply without
//! `courier-reply-status` is a success. A message with `courier-fields` is
//! courier's (its reserved headers are trusted); one without is read as any
//! NATS message (see Mapping), so a plain client's request, or a reply from
//! an earlier courier version (one header per field), still decodes.

mod codec;
mod compact;
mod config;
mod connection;
mod delivery;
mod error;
mod flow;
mod inbox;
mod lag;
mod publisher;
mod reply_feed;
mod request;
mod subscriber;

use std::sync::Arc;

use courier_core::{
    Broker, Close, DeliveryStream, Message, Publisher, Result, Subscriber, Subscription,
    async_trait,
};

pub use config::{NatsConfig, SCHEMES, Storage, URL_OPTIONS, consumer_name, stream_name};
pub use error::NatsError;
pub use request::request_subject;

use connection::Inner;

/// A connection to a NATS server with JetStream, as publisher and subscriber.
///
/// Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

impl NatsBroker {
    /// Connects to `nats://[user:password@|token@]host[:port][?options]`
    /// (or `tls://`) with the default settings and the URL's options (see
    /// [URL](crate#url)).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`](courier_core::Error::InvalidUrl) for a malformed URL or an unknown or malformed
    /// option; [`Error::Connect`](courier_core::Error::Connect) naming the URL (without password) and the kind:
    /// unreachable, refused, timed out, authentication failed, or
    /// `Unsupported` when JetStream is not enabled on the server.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, NatsConfig::default()).await
    }

    /// Connects with `config`; the URL's options override it.
    ///
    /// # Errors
    ///
    /// As [`NatsBroker::connect`].
    pub async fn connect_with(url: &str, config: NatsConfig) -> Result<Self> {
        Ok(NatsBroker {
            inner: Arc::new(Inner::connect(url, config).await?),
        })
    }

    /// This connection as a run-time chosen [`Broker`].
    pub fn into_broker(self) -> Broker {
        let this = Arc::new(self);
        Broker::new("nats", this.clone(), this.clone()).with_requester(this)
    }

    /// The underlying async-nats client, for what courier does not cover.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Closes the connection: streams end, unsettled deliveries are NAKed so
    /// they come back at once, pending publishes are flushed. Idempotent.
    async fn close_connection(&self) -> Result<()> {
        self.inner.close().await
    }
}

#[async_trait]
impl Publisher for NatsBroker {
    async fn publish(&self, topic: &str, message: Message) -> Result<()> {
        self.publish_batch(topic, vec![message]).await
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        courier_core::adapter::instrumented_publish("nats", topic, messages, |messages| {
            publisher::publish(&self.inner, topic, messages)
        })
        .await
    }
}

#[async_trait]
impl Close for NatsBroker {
    fn health(&self) -> courier_core::telemetry::Health {
        lag::health(&self.inner)
    }

    async fn close(&self) -> Result<()> {
        self.close_connection().await
    }
}

#[async_trait]
impl Subscriber for NatsBroker {
    async fn provision(&self, subscription: &Subscription) -> Result<()> {
        self.inner
            .bounded(
                "provision",
                subscriber::provision(&self.inner, subscription),
            )
            .await
            .map(drop)
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        self.inner
            .bounded(
                "subscribe",
                subscriber::subscribe(self.inner.clone(), subscription),
            )
            .await
    }

    fn messaging_system(&self) -> &'static str {
        "nats"
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<courier_core::telemetry::Lag> {
        self.inner
            .bounded("lag", lag::lag(&self.inner, topic, group))
            .await
    }
}

#[async_trait]
impl courier_core::request::Requester for NatsBroker {
    /// Publishes the request over core NATS to the topic's request subject
    /// and waits for the reply on this connection's inbox. When no
    /// subscription of the topic runs, the server answers no-responders:
    /// [`RequestError::NoResponders`](courier_core::request::RequestError::NoResponders).
    async fn request(
        &self,
        topic: &str,
        message: Message,
        timeout: std::time::Duration,
    ) -> std::result::Result<Message, courier_core::request::RequestError> {
        let inner = &self.inner;
        inner.check_open()?;
        courier_core::name::validate_topic(topic).map_err(courier_core::Error::from)?;
        let limit = inner.client.max_payload();
        courier_core::adapter::check_payloads(std::slice::from_ref(&message), limit)?;
        // The connection's first request subscribes to the inbox, which
        // waits for room in the client's command channel: within the
        // request's timeout too.
        let started = std::time::Instant::now();
        let inbox = inner
            .inbox
            .get(&inner.client, &inner.shutdown, &inner.tasks);
        let (inbox, pending) = tokio::time::timeout(timeout, inbox).await.map_err(|_| {
            courier_core::request::RequestError::Timeout {
                elapsed: started.elapsed(),
            }
        })??;
        let timeout = timeout.saturating_sub(started.elapsed());
        // The reply subject carries the reply address and the request id,
        // so neither is written into the request's headers.
        courier_core::request::exchange_addressed(
            pending,
            topic,
            message,
            timeout,
            |ticket, request| async move {
                let client = &inner.client;
                let subject = request::request_subject(topic);
                let payload = request.payload().clone();
                // Without a header when the reply subject can carry every
                // field (see the crate docs).
                let sent = match crate::compact::subject_fields(&request, ticket.deadline_ms) {
                    Some(fields) => {
                        let reply = [&*inbox, ".", &ticket.id, ".", &fields].concat();
                        client.publish_with_reply(subject, reply, payload).await
                    }
                    None => {
                        let reply = [&*inbox, ".", &ticket.id].concat();
                        let headers = crate::compact::encode_request(&request, ticket.deadline_ms);
                        client
                            .publish_with_reply_and_headers(subject, reply, headers, payload)
                            .await
                    }
                };
                sent.map_err(|e| {
                    courier_core::request::RequestError::Transport(error::op_error("request", e))
                })
            },
        )
        .await
    }

    /// Publishes the reply over core NATS to the request's reply subject:
    /// at most once.
    async fn reply(&self, request: &Message, reply: Message) -> Result<()> {
        let subject = courier_core::request::headers::reply_address_of(error::BROKER, request)?;
        self.inner.check_open()?;
        request::send_reply(&self.inner, subject, &reply, "reply").await
    }

    fn late_replies(&self) -> u64 {
        self.inner.inbox.late_replies()
    }
}
