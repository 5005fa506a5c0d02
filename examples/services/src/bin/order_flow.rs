//! The order flow: `cargo run -p courier-examples --bin order-flow`.
//!
//! Without `--service`, every service runs in this process on the embedded
//! default (in-process broker, a fresh SQLite file) and a scripted
//! scenario drives the HTTP API, printing a timeline. `--service NAME`
//! (`api`, `stock`, `inventory`, `email`, or `all`) runs services until
//! Ctrl-C, for several processes on one broker and one database;
//! `--load N` places N orders and prints the figures. See the crate docs.

use std::process::ExitCode;
use std::sync::Arc;

use courier::Broker;
use courier_examples::cli::{Options, run_program};
use courier_examples::orders::api::StockGuard;
use courier_examples::orders::services::SERVICES;
use courier_examples::orders::{OrderFlow, OrderServices, load, scenario, stock};
use courier_examples::timeline::Timeline;
use courier_examples::{Database, Result};

#[tokio::main]
async fn main() -> ExitCode {
    run_program("order-flow", serve).await
}

async fn serve(options: Options, broker: Broker, db: Arc<Database>) -> Result<()> {
    let flow = OrderFlow::new(broker, db);
    let guard = StockGuard::default();
    if let Some(services) = options.services(&SERVICES) {
        let flow = flow.timeline(Timeline::printing());
        let http = options.http.as_deref().unwrap_or("127.0.0.1:8080");
        let running = OrderServices::start(&flow, &services, http, guard).await?;
        if services.contains(&"stock") {
            stock::seed_catalog(&flow).await?;
        }
        match running.api_url() {
            Some(url) => println!(
                "{} running, API on {url}; Ctrl-C stops",
                services.join(", ")
            ),
            None => println!("{} running; Ctrl-C stops", services.join(", ")),
        }
        return running.run_until_ctrl_c().await;
    }
    let http = options.http.as_deref().unwrap_or("127.0.0.1:0");
    if let Some(orders) = options.load {
        let running = OrderServices::start(&flow, &SERVICES, http, guard).await?;
        let report = load::run(&running, orders).await;
        running.shutdown().await?;
        println!("{}", report?);
        return Ok(());
    }
    let flow = flow.timeline(Timeline::printing());
    let mut running = OrderServices::start(&flow, &SERVICES, http, guard).await?;
    let result = scenario::run(&mut running).await;
    running.shutdown().await?;
    result
}
