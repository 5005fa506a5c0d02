//! One AMQP connection that comes back: [`Link`] opens it, notices when it
//! is gone and opens a new one with backoff; each incarnation is a
//! [`Session`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_core::adapter::TaskSet;
use courier_core::error::redact_url;
use courier_core::{BrokerErrorKind, Error, Result};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::AmqpConfig;
use crate::error::{self, AmqpError};
pub(crate) use crate::session::{Session, connection_lost};
pub(crate) use crate::watch::{Watch, unless_dead};

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
    /// Detached work (cancelling the consumers of dropped streams, closing
    /// consumer channels and dead connections), which `close` waits for.
    tasks: TaskSet,
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
            tasks: TaskSet::new(),
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

    /// The link's detached tasks.
    pub(crate) fn tasks(&self) -> &TaskSet {
        &self.tasks
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
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let opening = async {
            let connection = Connection::connect_uri(self.uri.clone(), properties).await?;
            Session::open(generation, connection).await
        };
        match tokio::time::timeout(timeout, opening).await {
            Ok(Ok(session)) => Ok(Arc::new(session)),
            Ok(Err(e)) => Err(error::connect_error(&self.redacted, e)),
            Err(_) => Err(error::connect_timeout(&self.redacted, timeout)),
        }
    }

    /// Whether the link has a live connection now.
    pub(crate) fn is_connected(&self) -> bool {
        self.live().is_some()
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
            dead.discard(&self.tasks);
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
                        let _ = session.close().await;
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
            dead.discard(&self.tasks);
        }
    }

    /// Runs `op` on the current session, reconnecting and trying again
    /// when the connection is lost, until the reconnect policy gives up. A
    /// refusal by the broker is returned at once. The whole run, reconnects
    /// included, is bounded by [`AmqpConfig::confirm_timeout`]: a broker
    /// that stops answering gives [`Error::Timeout`] naming `operation`.
    pub(crate) async fn run<T, F, Fut>(&self, operation: &'static str, op: F) -> Result<T>
    where
        F: FnMut(Arc<Session>) -> Fut,
        Fut: Future<Output = lapin::Result<T>>,
    {
        let after = self.config.confirm_timeout;
        courier_core::error::within(operation, after, self.run_unbounded(operation, op)).await
    }

    async fn run_unbounded<T, F, Fut>(&self, operation: &'static str, mut op: F) -> Result<T>
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

    /// Closes: new operations fail with [`Error::Closed`], settlements get
    /// their [`SETTLE_GRACE`], the link's tasks (dropped streams cancelling
    /// their consumers, consumer channels closing) finish within
    /// [`CLOSE_TASKS`], then outstanding publisher confirms are awaited and
    /// the connection is closed within the session's close bound, so the
    /// broker requeues unsettled deliveries. Idempotent.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] naming `close` when the tasks or the connection
    /// did not finish within their bounds (the connection is closed
    /// all the same).
    pub(crate) async fn close(&self) -> Result<()> {
        self.closed.cancel();
        self.settle_grace().await;
        let tasks = self.tasks.close_within(CLOSE_TASKS).await;
        let session = self.current.lock().take();
        let closing = match session {
            Some(session) => session.close().await,
            None => Ok(()),
        };
        tasks.and(closing)
    }
}

/// How long closing waits for a link's detached tasks.
pub(crate) const CLOSE_TASKS: Duration = Duration::from_secs(5);
