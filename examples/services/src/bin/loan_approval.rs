//! The loan approval: `cargo run -p courier-examples --bin loan-approval`.
//!
//! Without `--service`, every service runs in this process on the embedded
//! default (in-process broker, a fresh SQLite file) and a scripted
//! scenario drives the HTTP API, printing a timeline. `--service NAME`
//! (`api`, `credit-check`, `risk`, `manager`, `decisions`, or `all`) runs
//! services until Ctrl-C, for several processes on one broker and one
//! database. See the crate docs.

use std::process::ExitCode;
use std::sync::Arc;

use courier::Broker;
use courier_examples::cli::{Options, run_program};
use courier_examples::loans::services::SERVICES;
use courier_examples::loans::{LoanFlow, LoanServices, scenario};
use courier_examples::timeline::Timeline;
use courier_examples::{Database, Error, Result};

#[tokio::main]
async fn main() -> ExitCode {
    run_program("loan-approval", serve).await
}

async fn serve(options: Options, broker: Broker, db: Arc<Database>) -> Result<()> {
    if options.load.is_some() {
        return Err(Error::Usage("--load is for order-flow".into()));
    }
    let flow = LoanFlow::new(broker, db).timeline(Timeline::printing());
    if let Some(services) = options.services(&SERVICES) {
        let http = options.http.as_deref().unwrap_or("127.0.0.1:8081");
        let running = LoanServices::start(&flow, &services, http).await?;
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
    let running = LoanServices::start(&flow, &SERVICES, http).await?;
    let result = scenario::run(&running).await;
    running.shutdown().await?;
    result
}
