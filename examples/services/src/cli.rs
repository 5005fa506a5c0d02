//! The command line both binaries share.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use courier::Broker;
use courier::error::redact_url;

use crate::db::Database;
use crate::error::{Error, Result};

/// What to run, read from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--broker URL`: `memory://` (default), `amqp://…`, `kafka://…`,
    /// `nats://…` (each broker behind its Cargo feature).
    pub broker: String,
    /// `--database URL`: `sqlite://path` or `postgres://…`; by default a
    /// fresh SQLite file in the temporary directory.
    pub database: Option<String>,
    /// `--service NAME`: run only this service until Ctrl-C; by default
    /// every service runs in this process and the scripted scenario runs
    /// against them.
    pub service: Option<String>,
    /// `--http ADDRESS`: where the API listens (`127.0.0.1:8080` for
    /// `--service api`, any free port otherwise).
    pub http: Option<String>,
    /// `--load N`: instead of the scenario, N requests through the HTTP API
    /// with every service in this process, and the figures.
    pub load: Option<usize>,
}

impl Options {
    /// Reads the process's arguments.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for an unknown flag or a flag without its value.
    pub fn from_env() -> Result<Self> {
        Self::parse(std::env::args().skip(1))
    }

    /// Reads `args` (without the program name).
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for an unknown flag or a flag without its value.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self> {
        let mut options = Options {
            broker: "memory://".into(),
            database: None,
            service: None,
            http: None,
            load: None,
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| Error::Usage(format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "--broker" => options.broker = value()?,
                "--database" => options.database = Some(value()?),
                "--service" => options.service = Some(value()?),
                "--http" => options.http = Some(value()?),
                "--load" => {
                    let n = value()?;
                    options.load = Some(
                        n.parse()
                            .map_err(|_| Error::Usage(format!("--load {n}: not a count")))?,
                    );
                }
                "-h" | "--help" => return Err(Error::Usage(USAGE.into())),
                other => return Err(Error::Usage(format!("unknown flag {other}\n{USAGE}"))),
            }
        }
        Ok(options)
    }

    /// The database URL: the one given, or a fresh SQLite file for this
    /// run (returned too, to be removed at the end).
    pub fn database_url(&self, program: &str) -> (String, Option<PathBuf>) {
        match &self.database {
            Some(url) => (url.clone(), None),
            None => {
                let file = std::env::temp_dir().join(format!(
                    "courier-{program}-{}.db",
                    uuid::Uuid::now_v7().simple()
                ));
                (format!("sqlite://{}", file.display()), Some(file))
            }
        }
    }
}

/// The flags, for `--help`.
pub const USAGE: &str =
    "[--broker URL] [--database URL] [--service NAME] [--http ADDRESS] [--load N]";

/// Removes a run's SQLite file and its WAL companions.
pub fn remove_database_file(file: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}

impl Options {
    /// The services `--service` names: `all` is every one of `all`; `None`
    /// without `--service`.
    pub fn services<'a>(&'a self, all: &[&'a str]) -> Option<Vec<&'a str>> {
        self.service.as_deref().map(|service| match service {
            "all" => all.to_vec(),
            one => vec![one],
        })
    }
}

/// A binary's `main`: reads the options, connects the broker and the
/// database, runs `serve`, closes both (and removes a run's own SQLite
/// file), and turns an error into a message and a failure exit code.
pub async fn run_program<F, Fut>(program: &str, serve: F) -> ExitCode
where
    F: FnOnce(Options, Broker, Arc<Database>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    match run(program, serve).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program}: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run<F, Fut>(program: &str, serve: F) -> Result<()>
where
    F: FnOnce(Options, Broker, Arc<Database>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let options = Options::from_env()?;
    let (database, file) = options.database_url(program);
    println!(
        "{program} on {} and {}",
        redact_url(&options.broker),
        redact_url(&database)
    );
    let broker = courier::connect(&options.broker).await?;
    let db = Database::connect(&database).await?;
    let result = serve(options, broker.clone(), db.clone()).await;
    db.close().await;
    broker.close().await?;
    if let Some(file) = file {
        remove_database_file(&file);
    }
    result
}
