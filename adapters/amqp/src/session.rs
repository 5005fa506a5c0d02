//! One incarnation of a [`Link`](crate::connection::Link)'s connection: the
//! channels and the declaration cache that belong to it.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use courier_core::Result;
use courier_core::adapter::{OncePerKey, TaskSet};
use futures::FutureExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};
use parking_lot::Mutex;

use crate::error::is_connection_error;
use crate::topology;
use crate::watch::unless_dead;

/// How long `close` waits for outstanding publisher confirms.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

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
    pub(crate) generation: u64,
    connection: Connection,
    /// The channel every publish of this connection goes through, in
    /// confirm mode; replaced when the broker closed it.
    publish: Mutex<Arc<Channel>>,
    /// The channel declarations go through; a refused declaration closes it
    /// and it is replaced.
    topology: tokio::sync::Mutex<Channel>,
    reopen: tokio::sync::Mutex<()>,
    /// Exchanges declared on this connection: the first publish to a topic
    /// declares its exchange, publishes racing it wait for that outcome.
    exchanges: OncePerKey<(), lapin::Error>,
    /// Makes "take a delivery tag" and "queue the frames" one step, so that
    /// concurrent publishes on the channel get their confirms right.
    order: Mutex<()>,
    /// The id of a publishing channel given up on (see
    /// [`Session::give_up_publish_channel`]).
    given_up: Mutex<Option<u16>>,
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
    /// The session of a newly opened connection: its publishing channel (in
    /// confirm mode) and its channel for declarations.
    pub(crate) async fn open(generation: u64, connection: Connection) -> lapin::Result<Self> {
        let publish = confirm_channel(&connection).await?;
        let topology = connection.create_channel().await?;
        Ok(Session {
            generation,
            connection,
            publish: Mutex::new(Arc::new(publish)),
            topology: tokio::sync::Mutex::new(topology),
            reopen: tokio::sync::Mutex::new(()),
            exchanges: OncePerKey::new(),
            order: Mutex::new(()),
            given_up: Mutex::new(None),
        })
    }

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
        if self.usable(&channel) {
            return Ok(channel);
        }
        let _reopen = self.reopen.lock().await;
        let channel = self.publish.lock().clone();
        if self.usable(&channel) {
            return Ok(channel);
        }
        let channel = Arc::new(self.guard(confirm_channel(&self.connection)).await?);
        *self.publish.lock() = channel.clone();
        *self.given_up.lock() = None;
        Ok(channel)
    }

    fn usable(&self, channel: &Channel) -> bool {
        channel.status().connected() && *self.given_up.lock() != Some(channel.id())
    }

    /// Stops publishing on `channel` after a confirm that never came: the
    /// broker may have wedged the channel (a publish routed to a quorum
    /// queue without a leader blocks every later confirm on it), so the
    /// next publish opens a new one. The old channel is closed without
    /// waiting for the broker's answer.
    pub(crate) fn give_up_publish_channel(&self, channel: &Channel) {
        *self.given_up.lock() = Some(channel.id());
        let _ = channel
            .close(200, "no publisher confirm in time".into())
            .now_or_never();
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

    /// Declares the exchange unless this connection already did; one
    /// declaration however many publishes ask at once.
    pub(crate) async fn ensure_exchange(&self, exchange: &str) -> lapin::Result<()> {
        let declare = || {
            self.declare(
                |channel| async move { topology::declare_exchange(&channel, exchange).await },
            )
        };
        self.exchanges
            .get_or_run(exchange, declare, lapin::Error::clone)
            .await
    }

    /// How many exchange declarations this connection started.
    #[cfg(test)]
    pub(crate) fn exchange_declarations(&self) -> u64 {
        self.exchanges.runs()
    }

    /// Forgets which exchanges exist (one may have been deleted).
    pub(crate) fn forget_exchanges(&self) {
        self.exchanges.forget_all();
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

    /// Closes the connection in the background, as one of `tasks`.
    pub(crate) fn discard(self: Arc<Self>, tasks: &TaskSet) {
        if !self.is_alive() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let closing = async move {
                let _ = self.close().await;
            };
            tasks.spawn_on("close a lost connection", closing, &runtime);
        }
    }

    /// Waits for outstanding confirms, then closes the connection; both
    /// together within [`CLOSE_FLUSH`], so a broker that stops answering
    /// cannot hold `close` up for longer.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] naming `close` after [`CLOSE_FLUSH`].
    pub(crate) async fn close(&self) -> Result<()> {
        if !self.is_alive() {
            return Ok(());
        }
        let channel = self.publish.lock().clone();
        courier_core::error::within("close", CLOSE_FLUSH, async {
            let _ = channel.wait_for_confirms().await;
            let _ = self.connection.close(200, "closing".into()).await;
            Ok(())
        })
        .await
    }
}
