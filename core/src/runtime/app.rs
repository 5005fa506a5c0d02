//! Several consumers with shared layers, started and stopped together.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::consumer::{ConsumerBuilder, RunningConsumer};
use super::handler::{BoxHandler, SharedLayer};
use super::middleware::Layer;
use super::shutdown::signal;
use super::stats::ConsumerStats;
use crate::error::Result;
use crate::pubsub::Subscription;

/// A service's consumers, run together: shared layers around every
/// handler, one start, one shutdown (the shape of Watermill's router or
/// MassTransit's bus).
///
/// Layers added to the app wrap each consumer's handler outside the
/// consumer's own layers, in the order added (the first is the outermost).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_core::runtime::{self, App, Consumer, TimeoutLayer};
/// use courier_core::{Message, Subscription};
/// use courier_memory::MemoryBroker;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier_core::Result<()> {
/// let broker = MemoryBroker::new().into_broker();
/// let app = App::new()
///     .layer(TimeoutLayer::new(Duration::from_secs(10)))
///     .consumer(Consumer::builder(&broker, Subscription::new("orders", "billing"),
///         runtime::typed(|order: u64| async move { println!("bill {order}"); Ok(()) })))
///     .consumer(Consumer::builder(&broker, Subscription::new("orders", "shipping"),
///         runtime::typed(|order: u64| async move { println!("ship {order}"); Ok(()) })));
///
/// let running = app.start().await?; // every group exists from here on
/// broker.publish("orders", Message::from_json(&7u64)?).await?;
/// # tokio::time::sleep(Duration::from_millis(50)).await;
/// let stats = running.shutdown().await?; // or app.run_until_signal().await
/// assert_eq!(stats.len(), 2);
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct App {
    layers: Vec<SharedLayer>,
    consumers: Vec<ConsumerBuilder>,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("layers", &self.layers.len())
            .field("consumers", &self.consumers)
            .finish()
    }
}

impl App {
    /// An app without consumers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps every consumer's handler in `layer`, outside the consumer's
    /// own layers. Layers added first are outermost.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxHandler> + Send + Sync + 'static,
    {
        self.layers
            .push(Arc::new(move |inner| Arc::new(layer.layer(inner))));
        self
    }

    /// Adds a consumer.
    pub fn consumer(mut self, consumer: ConsumerBuilder) -> Self {
        self.consumers.push(consumer);
        self
    }

    /// Starts every consumer, in the order added, each returning once
    /// subscribed.
    ///
    /// # Errors
    ///
    /// The first consumer that fails to start; those already started are
    /// shut down before this returns.
    pub async fn start(self) -> Result<RunningApp> {
        let mut running = Vec::with_capacity(self.consumers.len());
        for builder in self.consumers {
            let builder = builder.with_outer_layers(&self.layers);
            match builder.start().await {
                Ok(consumer) => running.push(consumer),
                Err(error) => {
                    RunningApp { consumers: running }.shutdown().await.ok();
                    return Err(error);
                }
            }
        }
        Ok(RunningApp { consumers: running })
    }

    /// Starts every consumer, runs until `trigger` completes (or every
    /// consumer has stopped by itself), then shuts them all down together.
    ///
    /// # Errors
    ///
    /// As [`App::start`] and [`RunningApp::shutdown`].
    pub async fn run_until(self, trigger: impl Future<Output = ()>) -> Result<Vec<ConsumerStats>> {
        let running = self.start().await?;
        let all_stopped =
            futures::future::join_all(running.consumers.iter().map(RunningConsumer::stopped));
        tokio::select! {
            () = trigger => {}
            _ = all_stopped => {}
        }
        running.shutdown().await
    }

    /// [`App::run_until`] SIGINT (Ctrl-C) or SIGTERM, for services.
    ///
    /// # Errors
    ///
    /// As [`App::run_until`].
    pub async fn run_until_signal(self) -> Result<Vec<ConsumerStats>> {
        self.run_until(signal()).await
    }
}

/// The running consumers of an [`App`]; made by [`App::start`]. Dropping it
/// stops every consumer as dropping a [`RunningConsumer`] does.
#[must_use = "dropping a RunningApp stops its consumers"]
#[derive(Debug)]
pub struct RunningApp {
    consumers: Vec<RunningConsumer>,
}

impl RunningApp {
    /// The running consumers, in the order they were added.
    pub fn consumers(&self) -> &[RunningConsumer] {
        &self.consumers
    }

    /// The subscriptions, in the order the consumers were added.
    pub fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.consumers.iter().map(RunningConsumer::subscription)
    }

    /// Shuts every consumer down at once (phase 1 starts for all of them
    /// together, so their deadlines run in parallel) and returns their
    /// final numbers in the order they were added.
    ///
    /// # Errors
    ///
    /// The first consumer whose stream had failed; the others are shut
    /// down all the same.
    pub async fn shutdown(self) -> Result<Vec<ConsumerStats>> {
        for consumer in &self.consumers {
            consumer.trigger_shutdown();
        }
        let outcomes =
            futures::future::join_all(self.consumers.into_iter().map(RunningConsumer::shutdown))
                .await;
        outcomes.into_iter().collect()
    }
}
