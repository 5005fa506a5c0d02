//! Starting the order flow's services, all in one process or one by one.

use courier::idempotency::IdempotencyLayer;
use courier::outbox::RelayHandle;
use courier::resilience::CircuitBreaker;
use courier::runtime::RunningConsumer;

use super::api::{self, StockGuard};
use super::flow::OrderFlow;
use super::{email, inventory, stock};
use crate::error::{Error, Result};
use crate::http::HttpServer;

/// The services' names, for `--service`.
pub const SERVICES: [&str; 4] = ["api", "stock", "inventory", "email"];

/// The running services of this process; the ones not started are `None`.
/// Each can be shut down and started again on its own (the scenario and
/// the tests stop the stock service and the inventory service for a
/// while).
#[derive(Debug)]
pub struct OrderServices {
    /// The handles the services share.
    pub flow: OrderFlow,
    /// The HTTP API (`api`).
    pub api: Option<HttpServer>,
    /// The API's circuit breaker around the stock service.
    pub breaker: Option<CircuitBreaker>,
    /// The outbox relay (runs with the API, which writes the outbox).
    pub relay: Option<RelayHandle>,
    /// The stock responder (`stock`).
    pub stock: Option<RunningConsumer>,
    /// The inventory consumer (`inventory`).
    pub inventory: Option<RunningConsumer>,
    /// The email consumer (`email`).
    pub email: Option<RunningConsumer>,
    /// The email consumer's idempotency layer, with its counts.
    pub email_dedup: Option<IdempotencyLayer>,
}

impl OrderServices {
    /// Starts `services` (names from [`SERVICES`]) on `flow`, the API
    /// listening on `http`.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for an unknown name; the broker's error when a
    /// subscription fails; [`Error::Io`] when the port cannot be bound.
    pub async fn start(
        flow: &OrderFlow,
        services: &[&str],
        http: &str,
        guard: StockGuard,
    ) -> Result<Self> {
        if let Some(unknown) = services.iter().find(|name| !SERVICES.contains(name)) {
            return Err(Error::Usage(format!(
                "unknown service {unknown}; the order flow has {}",
                SERVICES.join(", ")
            )));
        }
        flow.provision().await?;
        let mut running = OrderServices {
            flow: flow.clone(),
            api: None,
            breaker: None,
            relay: None,
            stock: None,
            inventory: None,
            email: None,
            email_dedup: None,
        };
        if services.contains(&"stock") {
            running.stock = Some(stock::start(flow).await?);
        }
        if services.contains(&"inventory") {
            running.inventory = Some(inventory::start(flow).await?);
        }
        if services.contains(&"email") {
            let (consumer, dedup) = email::start(flow).await?;
            running.email = Some(consumer);
            running.email_dedup = Some(dedup);
        }
        if services.contains(&"api") {
            let (router, breaker) = api::router(flow, guard);
            running.api = Some(HttpServer::start(http, router).await?);
            running.breaker = Some(breaker);
            running.relay = Some(flow.db.start_relay(&flow.broker));
        }
        Ok(running)
    }

    /// The API's base URL, when it runs here.
    pub fn api_url(&self) -> Option<String> {
        self.api.as_ref().map(HttpServer::url)
    }

    /// Stops the stock responder (an outage), if it runs.
    ///
    /// # Errors
    ///
    /// The consumer's shutdown error.
    pub async fn stop_stock(&mut self) -> Result<()> {
        if let Some(stock) = self.stock.take() {
            stock.shutdown().await?;
        }
        Ok(())
    }

    /// Starts the stock responder again.
    ///
    /// # Errors
    ///
    /// The broker's error when the subscription fails.
    pub async fn restart_stock(&mut self) -> Result<()> {
        self.stock = Some(stock::start(&self.flow).await?);
        Ok(())
    }

    /// Stops the inventory consumer, if it runs; its events wait in the
    /// broker meanwhile.
    ///
    /// # Errors
    ///
    /// The consumer's shutdown error.
    pub async fn stop_inventory(&mut self) -> Result<()> {
        if let Some(inventory) = self.inventory.take() {
            inventory.shutdown().await?;
        }
        Ok(())
    }

    /// Starts the inventory consumer again.
    ///
    /// # Errors
    ///
    /// The broker's error when the subscription fails.
    pub async fn restart_inventory(&mut self) -> Result<()> {
        self.inventory = Some(inventory::start(&self.flow).await?);
        Ok(())
    }

    /// Runs until Ctrl-C, then stops everything.
    ///
    /// # Errors
    ///
    /// As [`OrderServices::shutdown`].
    pub async fn run_until_ctrl_c(self) -> Result<()> {
        tokio::signal::ctrl_c().await?;
        self.shutdown().await
    }

    /// Stops the API first (no new orders), then the relay (what is
    /// committed is published or stays pending), then the consumers.
    ///
    /// # Errors
    ///
    /// A consumer's shutdown error.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(api) = self.api.take() {
            api.shutdown().await;
        }
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await;
        }
        for consumer in [self.stock.take(), self.inventory.take(), self.email.take()]
            .into_iter()
            .flatten()
        {
            consumer.shutdown().await?;
        }
        Ok(())
    }
}
