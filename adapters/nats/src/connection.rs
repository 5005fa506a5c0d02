//! The connection a [`NatsBroker`](crate::NatsBroker) and its clones share:
//! the client, the JetStream context, the streams known to exist, and what
//! closing must wait for.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::stream;
use courier_core::adapter::TaskSet;
use courier_core::{BrokerErrorKind, ConnectErrorKind, Error, Result};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Credentials, Endpoint, NatsConfig, Storage, stream_name};
use crate::error::{self, BROKER, NatsError, connect_error};
use crate::inbox::Inbox;

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
    pub(crate) inbox: Inbox,
    /// Other detached work (the end of the reply inbox, NAKs of dropped deliveries,
    /// dead-letter copies), which close also waits for.
    pub(crate) tasks: TaskSet,
    /// Signalled each time the client loses its connection to the server
    /// (async-nats's `Disconnected` event): a confirmation awaited across
    /// one of them cannot come any more (see [`Inner::unless_disconnected`]).
    disconnects: Arc<watch::Sender<()>>,
    /// How many times that happened so far, read on every pulled message
    /// (see [`Inner::connection_epoch`]).
    epoch: Arc<AtomicU64>,
}

impl Inner {
    /// Runs `confirmation`, the wait for the server's answer to something
    /// this connection has just sent, unless the connection is lost first:
    /// then [`Error::Broker`] of kind
    /// [`Unavailable`](courier_core::BrokerErrorKind::Unavailable) at once.
    /// What the client had written to the lost connection is not sent
    /// again and gets no answer, so waiting out the request timeout would
    /// only stall the caller. What it had not written yet goes out on the
    /// new connection and may still be acted on: the outcome is unknown,
    /// as after a timeout. A loss before this is called is not seen here;
    /// the request timeout still bounds that case.
    pub(crate) async fn unless_disconnected<T>(
        &self,
        operation: &'static str,
        confirmation: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        // Subscribing marks the signals so far as seen: only a loss from
        // now on ends the wait.
        let mut lost = self.disconnects.subscribe();
        tokio::select! {
            biased;
            outcome = confirmation => outcome,
            _ = lost.changed() => Err(Error::broker(
                BROKER,
                operation,
                BrokerErrorKind::Unavailable,
                "the connection to the server was lost before it confirmed; \
                 whether it was recorded is unknown",
            )),
        }
    }

    /// How many times the client has lost its connection so far. A
    /// message pulled when this was lower came over a connection that is
    /// gone (see [`Pulled`](crate::delivery::Pulled)).
    pub(crate) fn connection_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The id of the server the client is connected to, or was last (each
    /// start of a server draws a new one). Clones the server's `INFO`: not
    /// for every message.
    pub(crate) fn server_id(&self) -> Arc<str> {
        Arc::from(self.client.server_info().server_id)
    }

    /// Whether the client is connected now (not reconnecting).
    pub(crate) fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Runs `operation` within the request timeout: the whole operation,
    /// however many requests it makes, ends in [`Error::Timeout`] naming it
    /// when the server does not answer in time.
    pub(crate) async fn bounded<T>(
        &self,
        operation: &'static str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let after = self.config.request_timeout;
        match courier_core::error::within(operation, after, work).await {
            Err(e) if error::is_timeout(&e) => Err(Error::Timeout { operation, after }),
            outcome => outcome,
        }
    }

    /// One round trip to the server on this connection: a request to a
    /// fresh inbox nobody listens on, which the server itself answers with
    /// its no-responders status. The server handles a connection's
    /// commands in order, so `Ok` also proves it has every command sent
    /// before.
    pub(crate) async fn round_trip(&self) -> std::result::Result<(), async_nats::RequestError> {
        match self
            .client
            .request(self.client.new_inbox(), bytes::Bytes::new())
            .await
        {
            Err(e) if e.kind() != async_nats::RequestErrorKind::NoResponders => Err(e),
            _ => Ok(()),
        }
    }

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

    /// Connects to `url` with `config` (the URL's options override it).
    pub(crate) async fn connect(url: &str, config: NatsConfig) -> Result<Self> {
        let config = config.apply_url(url)?;
        let endpoint = Endpoint::parse(url)?;
        let disconnects = Arc::new(watch::Sender::new(()));
        let signalling = disconnects.clone();
        let epoch = Arc::new(AtomicU64::new(0));
        let counting = epoch.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name(&config.client_name)
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Disconnected) {
                    counting.fetch_add(1, Ordering::AcqRel);
                    signalling.send_replace(());
                }
                std::future::ready(())
            });
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
        Ok(Inner {
            client,
            js,
            config,
            streams: Mutex::new(HashSet::new()),
            closed: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            pull_loops: TaskTracker::new(),
            outstanding: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(0),
            inbox: Inbox::default(),
            tasks: TaskSet::new(),
            disconnects,
            epoch,
        })
    }

    /// Closes the connection: streams end, unsettled deliveries are NAKed so
    /// they come back at once, the connection's tasks finish, pending
    /// publishes are flushed. Idempotent. Bounded: see
    /// [`NatsBroker`](crate::NatsBroker)'s close bound.
    pub(crate) async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.shutdown.cancel();
        // Pull requests end within their expiry; NAKs sent before they end
        // would be redelivered into them.
        self.pull_loops.close();
        let pulls_bound = self.config.pull_expiry * 2 + Duration::from_secs(1);
        let pulls = match tokio::time::timeout(pulls_bound, self.pull_loops.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::Timeout {
                operation: "close",
                after: pulls_bound,
            }),
        };
        let pending: Vec<async_nats::Subject> =
            self.outstanding.lock().drain().map(|(_, s)| s).collect();
        let naks = pending.into_iter().map(|reply| {
            self.client
                .request(reply, bytes::Bytes::from_static(b"-NAK"))
        });
        let bound = self.config.request_timeout;
        // Bounded as a whole: handing the NAKs to the client waits for room
        // in its command channel, which a connection that takes nothing
        // more never makes.
        let naked = courier_core::error::within("close", bound, async {
            futures::future::join_all(naks).await;
            Ok(())
        })
        .await;
        let tasks = self.tasks.close_within(bound).await;
        let drained = courier_core::error::within("close", bound, async {
            self.client
                .drain()
                .await
                .map_err(|e| error::op_error("close", e))
        })
        .await;
        pulls.and(naked).and(tasks).and(drained)
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
