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
//!   (2 minutes by default) is stored once.
//! - **Message fields** (id, key, content type, timestamp, correlation and
//!   causation ids, user headers) travel as NATS headers
//!   ([`courier_core::adapter::wire`]; the id as `Nats-Msg-Id`) and come back
//!   exactly. Values NATS would alter (empty, or with leading or trailing
//!   white space) travel quoted. A message from another producer keeps its
//!   `Nats-Msg-Id` as id, or gets `<topic>-<stream sequence>`; one courier
//!   cannot represent goes to the dead-letter topic with the reason.
//! - **Settlement** is confirmed by the server: `ack` sends `+ACK` as a
//!   request and returns once the server answers. `Nack::Requeue` is a NAK,
//!   `RequeueAfter(d)` a NAK with delay, `DeadLetter` publishes the copy to
//!   the dead-letter topic (confirmed) and then terminates the original
//!   (`+TERM`). A delivery dropped unsettled is NAKed.
//! - **Flow**: a stream pulls at most [`Subscription::prefetch`] messages at
//!   a time and never holds more unsettled than that; the consumer's
//!   `max_ack_pending` ([`NatsConfig::max_ack_pending`]) bounds the group.
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
//! the reconnect or fails with a timeout: never a silent drop.
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
//! | `publish_timeout` | [`NatsConfig::request_timeout`]: the wait for a publish's JetStream ack, and for the server's confirmation of a settlement | 10 s |
//! | `storage` | [`NatsConfig::storage`] of the streams courier creates: `file` or `memory` | `file` |
//! | `duplicate_window` | [`NatsConfig::duplicate_window`] of the streams courier creates | 2 min |
//! | `ack_wait` | [`NatsConfig::ack_wait`] of the consumers courier creates | 30 s |
//! | `max_deliver` | [`NatsConfig::max_deliver`] of the consumers courier creates | no limit |
//! | `max_ack_pending` | [`NatsConfig::max_ack_pending`] of the consumers courier creates | 10,000 |
//!
//! Any other option is an [`Error::InvalidUrl`] naming it. A default
//! prefetch is not an option: each [`Subscription`] carries its own.
//!
//! # Request/reply
//!
//! Requests and replies use core NATS request/reply with inboxes, not
//! JetStream: [`Broker::request`] publishes the request to the topic's
//! request subject ([`request_subject`]: `_courier.request.<topic>`, which
//! no stream captures) with a reply subject in the connection's inbox
//! (`<inbox>.<request id>`, one wildcard subscription per connection, made
//! on its first request). Every subscription of the topic also listens on
//! that subject as a member of its group's queue group, so a responder is
//! an ordinary consumer of the topic and each request reaches one member
//! of one group; its reply goes over core NATS to the reply subject.
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
//!   over core NATS.
//!
//! Plain clients can answer or send courier requests: a NATS request to
//! `_courier.request.<topic>` is answered to its reply subject.
//! At-least-once publish/subscribe never uses core NATS.

mod config;
mod delivery;
mod error;
mod publisher;
mod request;
mod subscriber;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::stream;
use courier_core::{
    Broker, BrokerErrorKind, Close, ConnectErrorKind, DeliveryStream, Error, Message, Publisher,
    Result, Subscriber, Subscription, async_trait,
};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{NatsConfig, SCHEMES, Storage, URL_OPTIONS, consumer_name, stream_name};
pub use error::NatsError;
pub use request::request_subject;

use config::{Credentials, Endpoint};
use error::connect_error;

/// A connection to a NATS server with JetStream, as publisher and subscriber.
///
/// Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) config: NatsConfig,
    streams: Mutex<HashSet<String>>,
    closed: AtomicBool,
    pub(crate) shutdown: CancellationToken,
    /// The pull loops, which close waits for (see `subscriber::drain`).
    pub(crate) pull_loops: TaskTracker,
    /// Reply subjects of deliveries handed out and not yet settled, so that
    /// closing can NAK them at once instead of waiting for `ack_wait`.
    pub(crate) outstanding: Mutex<HashMap<u64, async_nats::Subject>>,
    pub(crate) next_token: AtomicU64,
    /// The reply inbox of this connection's requests.
    pub(crate) inbox: request::Inbox,
}

impl NatsBroker {
    /// Connects to `nats://[user:password@|token@]host[:port][?options]`
    /// (or `tls://`) with the default settings and the URL's options (see
    /// [URL](crate#url)).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a malformed URL or an unknown or malformed
    /// option; [`Error::Connect`] naming the URL (without password) and the kind:
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
        let config = config.apply_url(url)?;
        let endpoint = Endpoint::parse(url)?;
        let mut options = async_nats::ConnectOptions::new()
            .name(&config.client_name)
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout));
        options = match endpoint.credentials {
            Credentials::None => options,
            Credentials::Token(token) => options.token(token),
            Credentials::UserPassword(user, password) => options.user_and_password(user, password),
        };
        let client = options
            .connect(endpoint.address.as_str())
            .await
            .map_err(|e| connect_error(url, e))?;
        check_jetstream(&client, url).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        Ok(NatsBroker {
            inner: Arc::new(Inner {
                client,
                js,
                config,
                streams: Mutex::new(HashSet::new()),
                closed: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
                pull_loops: TaskTracker::new(),
                outstanding: Mutex::new(HashMap::new()),
                next_token: AtomicU64::new(0),
                inbox: request::Inbox::default(),
            }),
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
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.shutdown.cancel();
        // Pull requests end within their expiry; NAKs sent before they end
        // would be redelivered into them.
        self.inner.pull_loops.close();
        let expiry = self.inner.config.pull_expiry;
        let _ = tokio::time::timeout(
            expiry * 2 + Duration::from_secs(1),
            self.inner.pull_loops.wait(),
        )
        .await;
        let pending: Vec<async_nats::Subject> = self
            .inner
            .outstanding
            .lock()
            .drain()
            .map(|(_, s)| s)
            .collect();
        let naks = pending.into_iter().map(|reply| {
            self.inner
                .client
                .request(reply, bytes::Bytes::from_static(b"-NAK"))
        });
        let _ = futures::future::join_all(naks).await;
        self.inner
            .client
            .drain()
            .await
            .map_err(|e| error::op_error("close", e))
    }
}

impl Inner {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("nats connection"));
        }
        Ok(())
    }

    /// The topic's stream, created if missing.
    pub(crate) async fn ensure_stream(&self, topic: &str) -> Result<()> {
        if self.streams.lock().contains(topic) {
            return Ok(());
        }
        let config = stream::Config {
            name: stream_name(topic),
            subjects: vec![topic.to_owned()],
            storage: match self.config.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            duplicate_window: self.config.duplicate_window,
            ..Default::default()
        };
        let mut stream = self
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| error::op_error("create stream", e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| error::op_error("stream info", e))?;
        if !info.config.subjects.iter().any(|s| s == topic) {
            return Err(Error::broker(
                error::BROKER,
                "create stream",
                BrokerErrorKind::Conflict,
                NatsError::StreamConflict {
                    stream: info.config.name.clone(),
                    subjects: info.config.subjects.clone(),
                    topic: topic.to_owned(),
                },
            ));
        }
        self.streams.lock().insert(topic.to_owned());
        Ok(())
    }
}

/// Fails with `Unsupported` when the server does not run JetStream. The raw
/// account-info request is used because the typed one does not parse every
/// server version's answer.
async fn check_jetstream(client: &async_nats::Client, url: &str) -> Result<()> {
    let unsupported = |why: String| Error::Connect {
        url: courier_core::error::redact_url(url),
        kind: ConnectErrorKind::Unsupported,
        source: Some(why.into()),
    };
    let answer = client
        .request("$JS.API.INFO", bytes::Bytes::new())
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                unsupported("JetStream is not enabled on the server".to_owned())
            }
            _ => Error::Connect {
                url: courier_core::error::redact_url(url),
                kind: ConnectErrorKind::TimedOut,
                source: Some(Box::new(e)),
            },
        })?;
    let text = String::from_utf8_lossy(&answer.payload);
    if text.contains("\"error\"") {
        return Err(unsupported(format!("JetStream answered {text}")));
    }
    Ok(())
}

#[async_trait]
impl Publisher for NatsBroker {
    async fn publish(&self, topic: &str, message: Message) -> Result<()> {
        publisher::publish(&self.inner, topic, vec![message]).await
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        publisher::publish(&self.inner, topic, messages).await
    }
}

#[async_trait]
impl Close for NatsBroker {
    async fn close(&self) -> Result<()> {
        self.close_connection().await
    }
}

#[async_trait]
impl Subscriber for NatsBroker {
    async fn provision(&self, subscription: &Subscription) -> Result<()> {
        subscriber::provision(&self.inner, subscription)
            .await
            .map(drop)
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        subscriber::subscribe(self.inner.clone(), subscription).await
    }
}
