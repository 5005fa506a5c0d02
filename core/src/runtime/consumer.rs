//! The consumer: a handler run over a subscription.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::handler::{BoxHandler, Handler, SharedLayer};
use super::lanes::LaneIds;
use super::middleware::{CatchPanic, Layer};
use super::resubscribe::{Resubscribe, resubscribing};
use super::retry::RetryPolicy;
use super::shared::{Run, Running, Shared, Stop};
use super::shutdown::{ShutdownHandle, signal};
use super::slots::Slots;
use super::stats::{ConsumerMetrics, ConsumerStats, Counters};
use super::status::ConsumerStatus;
use crate::error::Result;
use crate::pubsub::{Broker, Subscriber, Subscription};
use crate::telemetry::{ConsumerTelemetry, LagReport};

/// Default [`ConsumerBuilder::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Default [`ConsumerBuilder::shutdown_deadline`].
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);
/// Least prefetch the consumer asks for; see [`ConsumerBuilder::prefetch`]
/// and the trade-off in [the module docs](crate::runtime#prefetch).
pub const MIN_PREFETCH: u16 = 256;

/// Something a consumer can subscribe through: a [`Broker`] or any
/// [`Subscriber`].
pub trait IntoSubscriber {
    /// The subscriber.
    fn into_subscriber(self) -> Arc<dyn Subscriber>;
}

impl IntoSubscriber for Broker {
    fn into_subscriber(self) -> Arc<dyn Subscriber> {
        self.subscriber()
    }
}

impl IntoSubscriber for &Broker {
    fn into_subscriber(self) -> Arc<dyn Subscriber> {
        self.subscriber()
    }
}

impl IntoSubscriber for Arc<dyn Subscriber> {
    fn into_subscriber(self) -> Arc<dyn Subscriber> {
        self
    }
}

impl<S: Subscriber + 'static> IntoSubscriber for Arc<S> {
    fn into_subscriber(self) -> Arc<dyn Subscriber> {
        self
    }
}

type LayerFn = Box<dyn FnOnce(BoxHandler) -> BoxHandler + Send>;

/// Makes a consumer's [`Run`] from its shared state and its layers: with
/// no layers, around the handler's own type.
type MakeRun = Box<dyn FnOnce(Shared, Vec<LayerFn>) -> Arc<dyn Run> + Send>;

/// Configures a [`Consumer`]; made by [`Consumer::builder`].
pub struct ConsumerBuilder {
    subscriber: Arc<dyn Subscriber>,
    subscription: Subscription,
    make_run: MakeRun,
    layers: Vec<LayerFn>,
    concurrency: usize,
    prefetch: Option<u16>,
    ordered_by_key: bool,
    retry: RetryPolicy,
    dead_letter_topic: Option<String>,
    provision_dead_letter_group: bool,
    shutdown_deadline: Duration,
    shutdown: ShutdownHandle,
    lag_report: Option<LagReport>,
    resubscribe: bool,
}

impl fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("subscription", &self.subscription)
            .field("layers", &self.layers.len())
            .field("concurrency", &self.concurrency)
            .field("prefetch", &self.prefetch)
            .field("ordered_by_key", &self.ordered_by_key)
            .field("retry", &self.retry)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field(
                "provision_dead_letter_group",
                &self.provision_dead_letter_group,
            )
            .field("shutdown_deadline", &self.shutdown_deadline)
            .finish_non_exhaustive()
    }
}

impl ConsumerBuilder {
    /// At most `limit` handler attempts run at once (0 counts as 1;
    /// default [`DEFAULT_CONCURRENCY`]). Messages with the same key still
    /// run one at a time; with a limit of 1 every message does, in arrival
    /// order.
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = limit.max(1);
        self
    }

    /// Prefetch of the subscription: how many unsettled deliveries the
    /// broker may hand the consumer ahead of the handlers. Default:
    /// twice the concurrency, at least [`MIN_PREFETCH`] (256), so a slot
    /// that frees up finds a message waiting, lanes of other keys can fill
    /// while one key is busy, and the broker's settlement round trip does
    /// not bound the throughput (measured figures and the trade-off: see
    /// [the module docs](crate::runtime#prefetch)). This overrides the
    /// prefetch set on the [`Subscription`].
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Some(prefetch.max(1));
        self
    }

    /// Whether messages with the same key are handled one at a time, in
    /// order (default `true`). Messages without a key are never ordered
    /// (unless the concurrency is 1).
    pub fn ordered_by_key(mut self, ordered: bool) -> Self {
        self.ordered_by_key = ordered;
        self
    }

    /// The retry policy (default [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Dead-letter to `topic` instead of `<topic>.dlq`. The name is
    /// checked by [`Consumer::start`], before anything is consumed.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// Whether [`Consumer::start`] provisions a group on the dead-letter
    /// topic, named as the consumer's own group, before it subscribes
    /// (default `true`), so the dead-letter topic exists and keeps every
    /// dead letter on every broker (see
    /// [the module docs](crate::runtime#dead-letters)). Turn it off when
    /// the dead-letter topic's groups are provisioned elsewhere; a
    /// dead-letter topic that then refuses the copy (RabbitMQ refuses a
    /// copy no queue would receive) makes the consumer hold the message and
    /// publish the copy again with a backoff until it is taken.
    pub fn provision_dead_letter_group(mut self, provision: bool) -> Self {
        self.provision_dead_letter_group = provision;
        self
    }

    /// How long the shutdown waits for in-flight messages before it
    /// cancels them and gives them back (default 30 s).
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.shutdown_deadline = deadline;
        self
    }

    /// Shuts down when `handle` is triggered, so one handle can stop
    /// several consumers. Each consumer has its own otherwise. (An
    /// [`App`](super::App) stops its consumers together without one.)
    pub fn shutdown_on(mut self, handle: ShutdownHandle) -> Self {
        self.shutdown = handle;
        self
    }

    /// Reads the group's lag every `every` in the background while the
    /// consumer runs, each read bounded by `timeout`, into the
    /// [`LAG`](crate::telemetry::metrics::LAG) gauge and
    /// [`RunningConsumer::status`]. A read that fails or times out leaves
    /// the last value, so a metrics scrape never waits on the broker. Off
    /// by default.
    pub fn report_lag(mut self, every: Duration, timeout: Duration) -> Self {
        self.lag_report = Some(LagReport { every, timeout });
        self
    }

    /// Wraps the handler in a middleware layer. The first layer added is
    /// the outermost: `.layer(a).layer(b)` calls `a`, which calls `b`,
    /// which calls the handler. See the [module docs](super) for the
    /// recommended order.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxHandler> + Send + 'static,
    {
        self.layers
            .push(Box::new(move |inner| Arc::new(layer.layer(inner))));
        self
    }

    /// Puts `outer` around this consumer's own layers (an [`App`](super::App)'s).
    pub(crate) fn with_outer_layers(mut self, outer: &[SharedLayer]) -> Self {
        let mut layers: Vec<LayerFn> = outer
            .iter()
            .map(|layer| {
                let layer = layer.clone();
                Box::new(move |inner| layer(inner)) as LayerFn
            })
            .collect();
        layers.append(&mut self.layers);
        self.layers = layers;
        self
    }

    /// Builds the consumer and [starts](Consumer::start) it.
    ///
    /// # Errors
    ///
    /// As [`Consumer::start`].
    pub async fn start(self) -> Result<RunningConsumer> {
        self.build().start().await
    }

    /// The consumer.
    pub fn build(self) -> Consumer {
        let prefetch = self.prefetch.unwrap_or_else(|| {
            u16::try_from(self.concurrency.saturating_mul(2))
                .unwrap_or(u16::MAX)
                .max(MIN_PREFETCH)
        });
        let stop = Stop::new(
            self.shutdown.flag.clone(),
            self.shutdown.token.child_token(),
        );
        let shared = Shared {
            topic: self.subscription.topic().into(),
            group: self.subscription.group().into(),
            retry: self.retry,
            dead_letter_topic: self.dead_letter_topic,
            ordered_by_key: self.ordered_by_key,
            serial: self.concurrency == 1,
            slots: Slots::new(self.concurrency),
            lanes: Mutex::default(),
            lane_ids: LaneIds::default(),
            stop,
            abort: CancellationToken::new(),
            counters: Arc::new(if self.concurrency == 1 {
                Counters::single_writer()
            } else {
                Counters::default()
            }),
            telemetry: ConsumerTelemetry::new(
                self.subscriber.messaging_system(),
                self.subscription.topic().into(),
                self.subscription.group().into(),
            ),
            lag_report: self.lag_report,
        };
        Consumer {
            subscriber: self.subscriber,
            subscription: self.subscription.prefetch(prefetch),
            provision_dead_letter_group: self.provision_dead_letter_group,
            shutdown_deadline: self.shutdown_deadline,
            shutdown: self.shutdown,
            shared: (self.make_run)(shared, self.layers),
            resubscribe: self.resubscribe,
        }
    }

    /// Whether the consumer subscribes again, with a jittered exponential
    /// backoff, when its subscription fails or ends while it runs (default
    /// `true`): an outage longer than the adapter's own reconnect budget
    /// then pauses the consumer instead of ending it. See
    /// [`RESUBSCRIBE_MIN_DELAY`](super::RESUBSCRIBE_MIN_DELAY). With
    /// `false`, the consumer ends with the subscription's error.
    pub fn resubscribe(mut self, resubscribe: bool) -> Self {
        self.resubscribe = resubscribe;
        self
    }
}

/// Runs a [`Handler`] over a [`Subscription`]: bounded concurrency,
/// per-key ordering, retries with backoff, dead-lettering, middleware and
/// a two-phase graceful shutdown. See the [module docs](super).
///
/// [`Consumer::start`] subscribes and returns a [`RunningConsumer`] once the
/// group exists, so a message published after `start` returns is never
/// missed; [`RunningConsumer::shutdown`] stops it and returns its final
/// numbers. Several consumers that start and stop together go in an
/// [`App`](super::App).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_core::runtime::{self, Consumer, Envelope, RetryPolicy, TimeoutLayer};
/// use courier_core::{Message, Subscription};
/// use courier_memory::MemoryBroker;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderPlaced { order: u64 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier_core::Result<()> {
/// let broker = MemoryBroker::new().into_broker();
/// let (done, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
///
/// let consumer = Consumer::builder(
///     &broker,
///     Subscription::new("orders", "billing"),
///     runtime::envelope(move |event: Envelope<OrderPlaced>| {
///         let done = done.clone();
///         async move {
///             done.send((event.body.order, event.meta.attempt()))?; // `?` turns errors into failures
///             Ok(())
///         }
///     }),
/// )
/// .concurrency(8)
/// .retry(RetryPolicy::exponential().max_attempts(3))
/// .layer(TimeoutLayer::new(Duration::from_secs(5)))
/// .start()
/// .await?; // subscribed: the group keeps every message from now on
///
/// broker.publish("orders", Message::from_json(&OrderPlaced { order: 7 })?).await?;
/// assert_eq!(done_rx.recv().await, Some((7, 1)));
///
/// let stats = consumer.shutdown().await?;
/// assert_eq!(stats.handled, 1);
/// assert_eq!(stats.in_flight, 0);
/// # Ok(()) }
/// ```
pub struct Consumer {
    subscriber: Arc<dyn Subscriber>,
    subscription: Subscription,
    provision_dead_letter_group: bool,
    shutdown_deadline: Duration,
    shutdown: ShutdownHandle,
    shared: Arc<dyn Run>,
    resubscribe: bool,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("subscriber", &self.subscriber)
            .field("subscription", &self.subscription)
            .field("shutdown_deadline", &self.shutdown_deadline)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A builder for a consumer of `subscription` through `subscriber`,
    /// calling `handler`.
    pub fn builder(
        subscriber: impl IntoSubscriber,
        subscription: Subscription,
        handler: impl Handler,
    ) -> ConsumerBuilder {
        ConsumerBuilder {
            subscriber: subscriber.into_subscriber(),
            subscription,
            make_run: Box::new(|shared, layers| running(shared, handler, layers)),
            layers: Vec::new(),
            concurrency: DEFAULT_CONCURRENCY,
            prefetch: None,
            ordered_by_key: true,
            retry: RetryPolicy::default(),
            dead_letter_topic: None,
            provision_dead_letter_group: true,
            shutdown_deadline: DEFAULT_SHUTDOWN_DEADLINE,
            shutdown: ShutdownHandle::new(),
            lag_report: None,
            resubscribe: true,
        }
    }

    /// The handle that shuts this consumer down (shared with every consumer
    /// given the same handle through [`ConsumerBuilder::shutdown_on`]).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// A live view of this consumer's numbers.
    pub fn metrics(&self) -> ConsumerMetrics {
        ConsumerMetrics {
            counters: self.shared.counters.clone(),
        }
    }

    /// The subscription as the consumer uses it (with its prefetch).
    pub fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    /// Subscribes, then handles messages on tasks of its own until it is
    /// shut down. Returns once the subscription exists (the group keeps
    /// every message published from then on), with the handle that stops
    /// it. Before subscribing, it checks the dead-letter topic's name and
    /// provisions the consumer's group on it (unless
    /// [`ConsumerBuilder::provision_dead_letter_group`] is off).
    ///
    /// The consumer stops when [`RunningConsumer::shutdown`] is called, its
    /// [`ShutdownHandle`] is triggered, or its subscriber was closed, in
    /// two phases (a subscription that fails or ends otherwise is
    /// subscribed again, see [`ConsumerBuilder::resubscribe`]):
    ///
    /// 1. Take nothing more: stop polling and drop the stream, so deliveries
    ///    the broker had sent ahead come back for the group; deliveries
    ///    queued in ordering lanes but not started are nacked
    ///    ([`Nack::Requeue`](crate::Nack::Requeue)), last first.
    /// 2. Let in-flight messages (including those waiting to be retried)
    ///    finish and settle, for up to the
    ///    [shutdown deadline](ConsumerBuilder::shutdown_deadline) counted
    ///    from the trigger; then cancel the rest (their handler futures are
    ///    dropped) and requeue them.
    ///
    /// Messages that completed were acked before the shutdown returns, so
    /// they are never delivered again after a clean shutdown. The
    /// subscriber is not closed: it may be shared.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName) for an invalid
    /// dead-letter topic (the default `<topic>.dlq` included, which can be
    /// too long), or provisioning the dead-letter group or subscribing
    /// failed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped before it returns, nothing runs; the
    /// subscription may have been created.
    pub async fn start(self) -> Result<RunningConsumer> {
        let dead_letters = dead_letter_subscription(&self.shared, &self.subscription)?;
        let Consumer {
            subscriber,
            subscription,
            provision_dead_letter_group,
            shutdown_deadline,
            shared,
            resubscribe,
            ..
        } = self;
        let metrics = ConsumerMetrics {
            counters: shared.counters.clone(),
        };
        let subscribe = async {
            if provision_dead_letter_group {
                subscriber.provision(&dead_letters).await?;
            }
            subscriber.subscribe(subscription.clone()).await
        };
        let stream = tokio::select! {
            biased;
            () = shared.stop.token.cancelled() => None,
            stream = subscribe => Some(stream?),
        };
        let resubscribes = Arc::new(AtomicU64::new(0));
        let stream = match stream {
            Some(first) if resubscribe => Some(resubscribing(
                first,
                Resubscribe {
                    subscriber: subscriber.clone(),
                    subscription: subscription.clone(),
                    stop: shared.stop.token.clone(),
                    resubscribes: resubscribes.clone(),
                },
            )),
            other => other,
        };
        if let (Some(report), Some(_)) = (shared.lag_report, &stream) {
            let stop = shared.stop.token.clone();
            shared
                .telemetry
                .report_lag(subscriber.clone(), &subscription, report, stop);
        }
        let stopped = CancellationToken::new();
        let task = tokio::spawn({
            let shared = shared.clone();
            // Cancelled when the task ends, however it ends (panic included).
            let stopped = stopped.clone().drop_guard();
            async move {
                let _stopped = stopped;
                match stream {
                    Some(stream) => shared.dispatch(stream, shutdown_deadline).await,
                    None => Ok(()),
                }
            }
        });
        Ok(RunningConsumer {
            task: Some(task),
            stopped,
            shared,
            metrics,
            subscription,
            resubscribes,
        })
    }

    /// [`Consumer::start`], then wait until the consumer stops (its
    /// [`ShutdownHandle`] is triggered or the stream ends).
    ///
    /// # Errors
    ///
    /// Subscribing failed, or the stream reported an unrecoverable error
    /// (after which the consumer still drained as described at
    /// [`Consumer::start`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops the consumer as dropping a
    /// [`RunningConsumer`] does: handlers still running are cut short and
    /// their messages come back.
    pub async fn run(self) -> Result<ConsumerStats> {
        self.start().await?.wait().await
    }

    /// [`Consumer::run`] until `trigger` completes, then shut down. Only
    /// this consumer stops, even if its [`ShutdownHandle`] is shared.
    ///
    /// # Errors
    ///
    /// As [`Consumer::run`].
    ///
    /// # Cancel safety
    ///
    /// As [`Consumer::run`].
    pub async fn run_until(self, trigger: impl Future<Output = ()>) -> Result<ConsumerStats> {
        let mut running = self.start().await?;
        tokio::select! {
            outcome = running.finish() => return outcome,
            () = trigger => {}
        }
        running.shutdown().await
    }

    /// [`Consumer::run`] until SIGINT (Ctrl-C) or SIGTERM, for services.
    ///
    /// # Errors
    ///
    /// As [`Consumer::run`].
    ///
    /// # Cancel safety
    ///
    /// As [`Consumer::run`].
    pub async fn run_until_signal(self) -> Result<ConsumerStats> {
        self.run_until(signal()).await
    }
}

/// The handler with what the consumer's tasks share. Without layers, the
/// handler keeps its own type, so that its futures are not boxed; the
/// consumer catches panics of the whole stack itself. With layers, the
/// handler gets a catcher of its own so that the layers see its panics as
/// failures, and the stack is type-erased.
fn running<H: Handler>(shared: Shared, handler: H, layers: Vec<LayerFn>) -> Arc<dyn Run> {
    if layers.is_empty() {
        return Arc::new(Running { shared, handler });
    }
    let mut handler: BoxHandler = Arc::new(CatchPanic::new(Arc::new(handler)));
    for layer in layers.into_iter().rev() {
        handler = layer(handler);
    }
    Arc::new(Running { shared, handler })
}

/// The consumer's group on its dead-letter topic, the topic's name checked.
fn dead_letter_subscription(shared: &Shared, subscription: &Subscription) -> Result<Subscription> {
    subscription.validate()?;
    let topic = match &shared.dead_letter_topic {
        Some(topic) => topic.clone(),
        None => crate::delivery::default_dead_letter_topic(subscription.topic()),
    };
    crate::name::validate_topic(&topic)?;
    Ok(Subscription::new(topic, subscription.group()))
}

/// A started consumer; made by [`Consumer::start`].
///
/// [`RunningConsumer::shutdown`] stops it gracefully and returns its final
/// numbers. Dropping the handle stops the consumer too, without waiting:
/// it takes nothing more, cancels the handlers still running (their
/// messages come back, as any unsettled delivery does) and its tasks end
/// on their own.
#[must_use = "dropping a RunningConsumer stops the consumer"]
pub struct RunningConsumer {
    task: Option<tokio::task::JoinHandle<Result<()>>>,
    /// Cancelled when the consumer's task has ended.
    stopped: CancellationToken,
    shared: Arc<dyn Run>,
    metrics: ConsumerMetrics,
    subscription: Subscription,
    resubscribes: Arc<AtomicU64>,
}

impl fmt::Debug for RunningConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningConsumer")
            .field("subscription", &self.subscription)
            .field("stats", &self.metrics.snapshot())
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl RunningConsumer {
    /// How often the consumer has subscribed again after its subscription
    /// failed or ended (see [`ConsumerBuilder::resubscribe`]).
    pub fn resubscribes(&self) -> u64 {
        self.resubscribes.load(Ordering::Acquire)
    }

    /// A live view of the consumer's numbers.
    pub fn metrics(&self) -> ConsumerMetrics {
        self.metrics.clone()
    }

    /// The subscription as the consumer uses it (with its prefetch).
    pub fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    /// What the consumer is doing now: running or stopping, its load, and
    /// the last lag read in the background. Cheap: a few atomic loads.
    pub fn status(&self) -> ConsumerStatus {
        ConsumerStatus::of(&self.shared, self.is_finished())
    }

    /// Whether the consumer has stopped (its shutdown completed or its
    /// stream ended and it drained).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|task| task.is_finished())
    }

    /// Waits until the consumer has stopped (as [`is_finished`](Self::is_finished)
    /// turns true), without taking the handle: for waiting on several
    /// consumers at once. The outcome is still [`shutdown`](Self::shutdown)'s
    /// or [`wait`](Self::wait)'s to return.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future changes nothing.
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }

    /// Starts the graceful shutdown of this consumer alone (even if its
    /// [`ShutdownHandle`] is shared) without waiting for it; see
    /// [`Consumer::start`] for the two phases.
    pub fn trigger_shutdown(&self) {
        self.shared.stop.trigger();
    }

    /// Shuts this consumer down gracefully and returns its final numbers;
    /// see [`Consumer::start`] for the two phases.
    ///
    /// # Errors
    ///
    /// The stream had reported an unrecoverable error before the shutdown.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the handle: what is still running is cut
    /// short and comes back.
    pub async fn shutdown(mut self) -> Result<ConsumerStats> {
        self.trigger_shutdown();
        self.finish().await
    }

    /// Waits until the consumer stops by itself (its [`ShutdownHandle`] is
    /// triggered or its stream ends) and returns its final numbers.
    ///
    /// # Errors
    ///
    /// As [`RunningConsumer::shutdown`].
    ///
    /// # Cancel safety
    ///
    /// As [`RunningConsumer::shutdown`].
    pub async fn wait(mut self) -> Result<ConsumerStats> {
        self.finish().await
    }

    /// Waits for the consumer's task. Cancel safe: the task stays with the
    /// handle until it has ended.
    pub(crate) async fn finish(&mut self) -> Result<ConsumerStats> {
        if let Some(task) = self.task.as_mut() {
            let outcome = task.await;
            self.task = None;
            match outcome {
                Ok(result) => result?,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => return Err(crate::Error::Closed("consumer")),
            }
        }
        Ok(self.metrics.snapshot())
    }
}

impl Drop for RunningConsumer {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.shared.stop.trigger();
            self.shared.abort.cancel();
        }
    }
}
