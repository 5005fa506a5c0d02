//! The loan approval: `cargo run -p courier-examples --bin loan-approval`.
//!
//! Without `--service`, every service runs in this process on the embedded
//! default (in-process broker, a fresh SQLite file) and a scripted
//! scenario drives the HTTP API, printing a timeline. `--service NAME`
//! (`api`, `credit-check`, `risk`, `manager`, `decisions`, or `all`) runs
//! services until Ctrl-C, for several processes on one broker and one
//! database. See the crate docs.

use std::process::ExitCode;

use courier::error::redact_url;
use courier_examples::cli::{Options, remove_database_file};
use courier_examples::loans::services::SERVICES;
use courier_examples::loans::{LoanFlow, LoanServices, scenario};
use courier_examples::timeline::Timeline;
use courier_examples::{Database, Error, Result};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loan-approval: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let options = Options::from_env()?;
    if options.load.is_some() {
        return Err(Error::Usage("--load is for order-flow".into()));
    }
    let (database, file) = options.database_url("loan-approval");
    println!(
        "loan-approval on {} and {}",
        redact_url(&options.broker),
        redact_url(&database)
    );
    let broker = courier::connect(&options.broker).await?;
    let db = Database::connect(&database).await?;
    let flow = LoanFlow::new(broker.clone(), db.clone()).timeline(Timeline::printing());
    let result = serve(&options, flow).await;
    db.close().await;
    broker.close().await?;
    if let Some(file) = file {
        remove_database_file(&file);
    }
    result
}

async fn serve(options: &Options, flow: LoanFlow) -> Result<()> {
    if let Some(service) = &options.service {
        let services: Vec<&str> = if service == "all" {
            SERVICES.to_vec()
        } else {
            vec![service.as_str()]
        };
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
