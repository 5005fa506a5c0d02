//! Starting the loan approval's services, all in one process or one by one.

use courier::outbox::RelayHandle;
use courier::runtime::RunningConsumer;

use super::api;
use super::decisions;
use super::flow::LoanFlow;
use super::levels::{self, Level};
use crate::error::{Error, Result};
use crate::http::HttpServer;

/// The services' names, for `--service`.
pub const SERVICES: [&str; 5] = ["api", "credit-check", "risk", "manager", "decisions"];

/// The running services of this process.
#[derive(Debug)]
pub struct LoanServices {
    /// The handles the services share.
    pub flow: LoanFlow,
    /// The HTTP API (`api`).
    pub api: Option<HttpServer>,
    /// The outbox relay (runs with the API).
    pub relay: Option<RelayHandle>,
    /// The level consumers that run here, with their level.
    pub levels: Vec<(Level, RunningConsumer)>,
    /// The decision and dead-letter recorders (`decisions`).
    pub decisions: Vec<RunningConsumer>,
}

impl LoanServices {
    /// Starts `services` (names from [`SERVICES`]) on `flow`, the API on
    /// `http`.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for an unknown name; the broker's error when a
    /// subscription fails; [`Error::Io`] when the port cannot be bound.
    pub async fn start(flow: &LoanFlow, services: &[&str], http: &str) -> Result<Self> {
        if let Some(unknown) = services.iter().find(|name| !SERVICES.contains(name)) {
            return Err(Error::Usage(format!(
                "unknown service {unknown}; the loan approval has {}",
                SERVICES.join(", ")
            )));
        }
        flow.provision().await?;
        let mut running = LoanServices {
            flow: flow.clone(),
            api: None,
            relay: None,
            levels: Vec::new(),
            decisions: Vec::new(),
        };
        if services.contains(&"decisions") {
            running.decisions = decisions::start(flow).await?.into();
        }
        for level in Level::ALL {
            if services.contains(&level.group()) {
                running
                    .levels
                    .push((level, levels::start(flow, level).await?));
            }
        }
        if services.contains(&"api") {
            running.api = Some(HttpServer::start(http, api::router(flow)).await?);
            running.relay = Some(flow.db.start_relay(&flow.broker));
        }
        Ok(running)
    }

    /// The API's base URL, when it runs here.
    pub fn api_url(&self) -> Option<String> {
        self.api.as_ref().map(HttpServer::url)
    }

    /// The running consumer of `level`, if it runs here.
    pub fn level(&self, level: Level) -> Option<&RunningConsumer> {
        self.levels
            .iter()
            .find(|(l, _)| *l == level)
            .map(|(_, c)| c)
    }

    /// Runs until Ctrl-C, then stops everything.
    ///
    /// # Errors
    ///
    /// As [`LoanServices::shutdown`].
    pub async fn run_until_ctrl_c(self) -> Result<()> {
        tokio::signal::ctrl_c().await?;
        self.shutdown().await
    }

    /// Stops the API, then the relay, then the consumers.
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
        for (_, consumer) in self.levels.drain(..) {
            consumer.shutdown().await?;
        }
        for consumer in self.decisions.drain(..) {
            consumer.shutdown().await?;
        }
        Ok(())
    }
}
