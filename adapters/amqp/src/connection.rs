//! One AMQP connection that comes back: [`Link`] opens it, notices when it
//! is gone and opens a new one with backoff; [`Session`] is one incarnation
//! of it, with the channels and the declaration cache that belong to it.

use std::collections::HashSet;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_core::error::redact_url;
use courier_core::{BrokerErrorKind, Error, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::AmqpConfig;
use crate::error::{self, AmqpError, is_connection_error};
use crate::topology;

/// How long `close` waits for outstanding publisher confirms.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

/// How often [`unless_dead`] looks at the channel.
const DEATH_WATCH: Duration = Duration::from_millis(100);

/// Awaits `future`, or gives up (`None`) once `alive` says its channel is
/// gone: a client future whose frames were still queued when the
/// connection died may never finish.
pub(crate) async fn unless_dead<T>(
    future: impl Future<Output = T>,
    alive: impl Fn() -> bool,
) -> Option<T> {
    Watch::new().wait(future, alive).await
}

/// A reusable [`unless_dead`]: one timer for many awaits (a batch of
/// publishes), and how long since one of them last finished.
pub(crate) struct Watch {
    ticks: tokio::time::Interval,
    progress: Instant,
}

impl Watch {
    pub(crate) fn new() -> Self {
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + DEATH_WATCH, DEATH_WATCH);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Watch {
            ticks,
            progress: Instant::now(),
        }
    }

    /// Awaits `future` unless `alive` turns false first (`None`).
    pub(crate) async fn wait<T>(
        &mut self,
        future: impl Future<Output = T>,
        alive: impl Fn() -> bool,
    ) -> Option<T> {
        self.wait_until(future, |_| !alive()).await
    }

    /// Awaits `future` unless `give_up` turns true first (`None`); checked
    /// every 100 ms with the time since the last await of this watch
    /// finished (or the watch began).
    pub(crate) async fn wait_until<T>(
        &mut self,
        future: impl Future<Output = T>,
        give_up: impl Fn(Duration) -> bool,
    ) -> Option<T> {
        let mut future = pin!(future);
        loop {
            tokio::select! {
                biased;
                out = &mut future => {
                    self.progress = Instant::now();
                    return Some(out);
                }
                _ = self.ticks.tick() => {
                    if give_up(self.progress.elapsed()) {
                        return None;
                    }
                }
            }
        }
    }
}

/// A connection to the broker that is re-established when lost.
pub(crate) struct Link {
    uri: AMQPUri,
    redacted: String,
    config: Arc<AmqpConfig>,
    role: &'static str,
    current: Mutex<Option<Arc<Session>>>,
    connecting: tokio::sync::Mutex<()>,
    closed: CancellationToken,
    generation: AtomicU64,
    /// When a delivery of this link was last settled (see [`SETTLE_GRACE`]).
    last_settled: Mutex<Option<Instant>>,
}

/// How long a consumer channel (or the subscriber's connection) stays open
/// after its last `basic.ack` / `basic.nack` before it is closed.
///
/// RabbitMQ 3.x quorum queues may drop settlements that are still buffered
/// inside the broker when the channel that sent them closes
/// (rabbitmq-server issue 10327): the acked messages then come back. AMQP
/// 0-9-1 has no reply to an ack to wait for instead, so closing waits for
/// this long after the last settlement.
pub(crate) const SETTLE_GRACE: Duration = Duration::from_millis(300);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("url", &self.redacted)
            .field("role", &self.role)
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .field("closed", &self.closed.is_cancelled())
            .finish()
    }
}

impl Link {
    /// Connects once; a failure is reported at once, typed.
    pub(crate) async fn open(
        url: &str,
        config: Arc<AmqpConfig>,
        role: &'static str,
    ) -> Result<Arc<Link>> {
        let redacted = redact_url(url);
        let mut uri: AMQPUri = url.parse().map_err(|reason| Error::InvalidUrl {
            url: redacted.clone(),
            reason,
        })?;
        if uri.query.heartbeat.is_none() {
            let secs = config.heartbeat.as_secs().clamp(1, u64::from(u16::MAX));
            uri.query.heartbeat = Some(secs as u16);
        }
        let link = Arc::new(Link {
            uri,
            redacted,
            config,
            role,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            closed: CancellationToken::new(),
            generation: AtomicU64::new(0),
            last_settled: Mutex::new(None),
        });
        let session = link.open_session().await?;
        *link.current.lock() = Some(session);
        Ok(link)
    }

    pub(crate) fn config(&self) -> &Arc<AmqpConfig> {
        &self.config
    }

    pub(crate) fn role(&self) -> &'static str {
        self.role
    }

    /// Cancelled once `close` was called.
    pub(crate) fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed(self.role));
        }
        Ok(())
    }

    async fn open_session(&self) -> Result<Arc<Session>> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("{}-{}", self.config.connection_name, self.role).into());
        let timeout = self.config.connect_timeout;
        let opening = async {
            let connection = Connection::connect_uri(self.uri.clone(), properties).await?;
            let publish = confirm_channel(&connection).await?;
            let topology = connection.create_channel().await?;
            Ok::<_, lapin::Error>((connection, publish, topology))
        };
        let (connection, publish, topology) = match tokio::time::timeout(timeout, opening).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => return Err(error::connect_error(&self.redacted, e)),
            Err(_) => return Err(error::connect_timeout(&self.redacted, timeout)),
        };
        Ok(Arc::new(Session {
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            connection,
            publish: Mutex::new(Arc::new(publish)),
            topology: tokio::sync::Mutex::new(topology),
            reopen: tokio::sync::Mutex::new(()),
            exchanges: Mutex::new(HashSet::new()),
            order: Mutex::new(()),
        }))
    }

    fn live(&self) -> Option<Arc<Session>> {
        self.current
            .lock()
            .as_ref()
            .filter(|s| s.is_alive())
            .cloned()
    }

    /// The current session; reconnects (one caller at a time, the others
    /// wait for it) when the connection is gone.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after `close`; after [`Reconnect::give_up_after`](crate::Reconnect::give_up_after)
    /// without a connection, a retryable [`Error::Broker`] whose source is
    /// [`AmqpError::GaveUp`] with the last connection error.
    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        self.check_open()?;
        if let Some(session) = self.live() {
            return Ok(session);
        }
        let _connecting = tokio::select! {
            guard = self.connecting.lock() => guard,
            () = self.closed.cancelled() => return Err(Error::Closed(self.role)),
        };
        self.check_open()?;
        if let Some(session) = self.live() {
            return Ok(session);
        }
        if let Some(dead) = self.current.lock().take() {
            dead.discard();
        }
        let policy = self.config.reconnect;
        let started = Instant::now();
        let mut failures = 0u32;
        loop {
            let attempt = tokio::select! {
                attempt = self.open_session() => attempt,
                () = self.closed.cancelled() => return Err(Error::Closed(self.role)),
            };
            match attempt {
                Ok(session) => {
                    if self.is_closed() {
                        session.close().await;
                        return Err(Error::Closed(self.role));
                    }
                    tracing::info!(url = %self.redacted, role = self.role, failures, "AMQP connection re-established");
                    *self.current.lock() = Some(session.clone());
                    return Ok(session);
                }
                Err(e) => {
                    failures += 1;
                    let waited = started.elapsed();
                    if waited >= policy.give_up_after {
                        tracing::error!(url = %self.redacted, role = self.role, error = %e, "gave up reconnecting");
                        return Err(error::broker(
                            "reconnect",
                            BrokerErrorKind::Unavailable,
                            AmqpError::GaveUp {
                                url: self.redacted.clone(),
                                waited,
                                last: Box::new(e),
                            },
                        ));
                    }
                    tracing::warn!(url = %self.redacted, role = self.role, error = %e, failures, "AMQP reconnect attempt failed");
                    let delay = policy.delay(failures).min(policy.give_up_after - waited);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.closed.cancelled() => return Err(Error::Closed(self.role)),
                    }
                }
            }
        }
    }

    /// Forgets `session` (if still current) after its connection failed, so
    /// that the next [`Link::session`] reconnects.
    pub(crate) fn broken(&self, session: &Session) {
        let mut current = self.current.lock();
        if current
            .as_ref()
            .is_some_and(|s| s.generation == session.generation)
            && let Some(dead) = current.take()
        {
            drop(current);
            dead.discard();
        }
    }

    /// Runs `op` on the current session, reconnecting and trying again
    /// when the connection is lost, until the reconnect policy gives up. A
    /// refusal by the broker is returned at once.
    pub(crate) async fn run<T, F, Fut>(&self, operation: &'static str, mut op: F) -> Result<T>
    where
        F: FnMut(Arc<Session>) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        let started = Instant::now();
        loop {
            let session = self.session().await?;
            match op(session.clone()).await {
                Ok(value) => return Ok(value),
                Err(e) if self.is_closed() => {
                    tracing::debug!(error = %e, "{operation} interrupted by close");
                    return Err(Error::Closed(self.role));
                }
                Err(e) if session.failed(&e) => {
                    self.broken(&session);
                    if started.elapsed() >= self.config.reconnect.give_up_after {
                        return Err(error::from_lapin(operation, e));
                    }
                }
                Err(e) => return Err(error::from_lapin(operation, e)),
            }
        }
    }

    /// Records that a delivery was just settled on this link.
    pub(crate) fn settled(&self) {
        *self.last_settled.lock() = Some(Instant::now());
    }

    /// Waits until [`SETTLE_GRACE`] has passed since the last settlement.
    pub(crate) async fn settle_grace(&self) {
        let last = *self.last_settled.lock();
        if let Some(wait) = last.and_then(|t| SETTLE_GRACE.checked_sub(t.elapsed())) {
            tokio::time::sleep(wait).await;
        }
    }

    /// Closes: new operations fail with [`Error::Closed`], outstanding
    /// publisher confirms are awaited (for a few seconds), settlements get
    /// their [`SETTLE_GRACE`], then the connection is closed, so the broker
    /// requeues unsettled deliveries. Idempotent.
    pub(crate) async fn close(&self) {
        self.closed.cancel();
        self.settle_grace().await;
        let session = self.current.lock().take();
        if let Some(session) = session {
            session.close().await;
        }
    }
}

/// The error of an operation whose connection died under it.
pub(crate) fn connection_lost() -> lapin::Error {
    lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Error).into()
}

async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// One incarnation of a [`Link`]'s connection.
pub(crate) struct Session {
    generation: u64,
    connection: Connection,
    /// The channel every publish of this connection goes through, in
    /// confirm mode; replaced when the broker closed it.
    publish: Mutex<Arc<Channel>>,
    /// The channel declarations go through; a refused declaration closes it
    /// and it is replaced.
    topology: tokio::sync::Mutex<Channel>,
    reopen: tokio::sync::Mutex<()>,
    /// Exchanges declared on this connection.
    exchanges: Mutex<HashSet<String>>,
    /// Makes "take a delivery tag" and "queue the frames" one step, so that
    /// concurrent publishes on the channel get their confirms right.
    order: Mutex<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("generation", &self.generation)
            .field("alive", &self.is_alive())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn is_alive(&self) -> bool {
        self.connection.status().connected()
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Awaits a client operation on this connection; fails like a lost
    /// connection if the connection dies while it waits.
    pub(crate) async fn guard<T>(
        &self,
        operation: impl Future<Output = lapin::Result<T>>,
    ) -> lapin::Result<T> {
        unless_dead(operation, || self.is_alive())
            .await
            .unwrap_or_else(|| Err(connection_lost()))
    }

    /// Whether `error` means this session's connection is gone.
    pub(crate) fn failed(&self, error: &lapin::Error) -> bool {
        is_connection_error(error) || !self.is_alive()
    }

    /// The publishing channel, reopened if the broker closed it.
    pub(crate) async fn publish_channel(&self) -> lapin::Result<Arc<Channel>> {
        let channel = self.publish.lock().clone();
        if channel.status().connected() {
            return Ok(channel);
        }
        let _reopen = self.reopen.lock().await;
        let channel = self.publish.lock().clone();
        if channel.status().connected() {
            return Ok(channel);
        }
        let channel = Arc::new(self.guard(confirm_channel(&self.connection)).await?);
        *self.publish.lock() = channel.clone();
        Ok(channel)
    }

    /// Runs declarations on the topology channel, reopened if needed.
    pub(crate) async fn declare<T, F, Fut>(&self, declare: F) -> lapin::Result<T>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        let mut channel = self.topology.lock().await;
        if !channel.status().connected() {
            *channel = self.guard(self.connection.create_channel()).await?;
        }
        self.guard(declare(channel.clone())).await
    }

    /// Declares the exchange unless this connection already did.
    pub(crate) async fn ensure_exchange(&self, exchange: &str) -> lapin::Result<()> {
        if self.exchanges.lock().contains(exchange) {
            return Ok(());
        }
        self.declare(|channel| async move { topology::declare_exchange(&channel, exchange).await })
            .await?;
        self.exchanges.lock().insert(exchange.to_owned());
        Ok(())
    }

    /// Forgets which exchanges exist (one may have been deleted).
    pub(crate) fn forget_exchanges(&self) {
        self.exchanges.lock().clear();
    }

    /// Publishes on `channel` and returns the pending confirm once the
    /// frames are written. Await it under a [`Watch`]: it may never finish
    /// if the connection dies meanwhile.
    pub(crate) async fn basic_publish(
        &self,
        channel: &Channel,
        exchange: &ShortString,
        routing_key: &ShortString,
        mandatory: bool,
        payload: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<PublisherConfirm> {
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let mut publishing = pin!(channel.basic_publish(
            exchange.clone(),
            routing_key.clone(),
            options,
            payload,
            properties,
        ));
        // The first poll takes the delivery tag and queues the frames, with
        // no await point in between; doing it under `order` keeps the frames
        // in tag order across threads.
        let mut first = true;
        poll_fn(|cx| {
            if std::mem::take(&mut first) {
                let _order = self.order.lock();
                publishing.as_mut().poll(cx)
            } else {
                publishing.as_mut().poll(cx)
            }
        })
        .await
    }

    /// Closes the connection in the background, without waiting.
    fn discard(self: Arc<Self>) {
        if !self.is_alive() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { self.close().await });
        }
    }

    /// Waits (briefly) for outstanding confirms, then closes the connection.
    pub(crate) async fn close(&self) {
        if !self.is_alive() {
            return;
        }
        let channel = self.publish.lock().clone();
        let _ = tokio::time::timeout(CLOSE_FLUSH, channel.wait_for_confirms()).await;
        let _ =
            tokio::time::timeout(CLOSE_FLUSH, self.connection.close(200, "closing".into())).await;
    }
}
