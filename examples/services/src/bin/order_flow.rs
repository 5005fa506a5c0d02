//! The order flow: `cargo run -p courier-examples --bin order-flow`.
//!
//! Without `--service`, every service runs in this process on the embedded
//! default (in-process broker, a fresh SQLite file) and a scripted
//! scenario drives the HTTP API, printing a timeline. `--service NAME`
//! (`api`, `stock`, `inventory`, `email`, or `all`) runs services until
//! Ctrl-C, for several processes on one broker and one database;
//! `--load N` places N orders and prints the figures. See the crate docs.

use std::process::ExitCode;

use courier::error::redact_url;
use courier_examples::cli::{Options, remove_database_file};
use courier_examples::orders::api::StockGuard;
use courier_examples::orders::services::SERVICES;
use courier_examples::orders::{OrderFlow, OrderServices, load, scenario, stock};
use courier_examples::timeline::Timeline;
use courier_examples::{Database, Result};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("order-flow: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let options = Options::from_env()?;
    let (database, file) = options.database_url("order-flow");
    println!(
        "order-flow on {} and {}",
        redact_url(&options.broker),
        redact_url(&database)
    );
    let broker = courier::connect(&options.broker).await?;
    let db = Database::connect(&database).await?;
    let result = serve(&options, OrderFlow::new(broker.clone(), db.clone())).await;
    db.close().await;
    broker.close().await?;
    if let Some(file) = file {
        remove_database_file(&file);
    }
    result
}

async fn serve(options: &Options, flow: OrderFlow) -> Result<()> {
    let guard = StockGuard::default();
    if let Some(service) = &options.service {
        let flow = flow.timeline(Timeline::printing());
        let services: Vec<&str> = if service == "all" {
            SERVICES.to_vec()
        } else {
            vec![service.as_str()]
        };
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
