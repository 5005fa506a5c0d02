//! The services' database: SQLite (the embedded default) or PostgreSQL,
//! each with its transactional outbox and its idempotency store on the
//! same pool, so a business write, an outbox row and a "processed" mark
//! commit in one transaction.
//!
//! Two small backends rather than `sqlx::Any`: the outbox's `enqueue` and
//! the idempotency store's `claim_in` take a transaction of a concrete
//! database. The services' queries are written once (`with_backend!`
//! expands the same code for each backend; the SQL uses `$1`-style
//! parameters, which SQLite reads too) and the schema ships as two sets of
//! migrations embedded with `sqlx::migrate!`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use courier::idempotency::{IdempotencyStore, SqliteStore, StoreConfig};
use courier::outbox::sqlite::SqliteOutbox;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::error::{Error, Result};

/// One database with what the services keep in it.
#[derive(Debug)]
pub struct Backend<DB: sqlx::Database, O, S> {
    /// The connection pool, shared by the services, the outbox and the store.
    pub pool: sqlx::Pool<DB>,
    /// The transactional outbox on this pool.
    pub outbox: O,
    /// The idempotency store on this pool (claims inside the caller's
    /// transaction with `claim_in`).
    pub store: Arc<S>,
}

/// The services' database, chosen by URL.
#[derive(Debug)]
#[non_exhaustive]
pub enum Database {
    /// `sqlite://path` or `sqlite::memory:`: the embedded default.
    Sqlite(Backend<sqlx::Sqlite, SqliteOutbox, SqliteStore>),
    /// `postgres://…` (feature `postgres`).
    #[cfg(feature = "postgres")]
    Postgres(
        Backend<
            sqlx::Postgres,
            courier::outbox::postgres::PostgresOutbox,
            courier::idempotency::PostgresStore,
        >,
    ),
}

/// Runs `$body` with `$b` bound to the [`Backend`] of `$db`, whichever
/// database it is: the same code, type-checked once per backend.
macro_rules! with_backend {
    ($db:expr, $b:ident => $body:expr) => {
        match $db {
            $crate::db::Database::Sqlite($b) => $body,
            #[cfg(feature = "postgres")]
            $crate::db::Database::Postgres($b) => $body,
        }
    };
}
pub(crate) use with_backend;

/// Connections per pool: SQLite has one writer anyway; PostgreSQL gets
/// enough for the API, the relay and the consumers of one process.
const SQLITE_CONNECTIONS: u32 = 8;
#[cfg(feature = "postgres")]
const POSTGRES_CONNECTIONS: u32 = 16;

impl Database {
    /// Connects to `url` (`sqlite://path`, `sqlite::memory:`,
    /// `postgres://…`), applies the services' migrations and creates the
    /// outbox and idempotency tables.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for a URL of another database (or PostgreSQL
    /// without the `postgres` feature), [`Error::Database`] when it cannot
    /// be reached, [`Error::Migrate`], [`Error::Outbox`] or
    /// [`Error::Idempotency`] when a table cannot be created.
    pub async fn connect(url: &str) -> Result<Arc<Database>> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30));
            let pool = SqlitePoolOptions::new()
                .max_connections(SQLITE_CONNECTIONS)
                .connect_with(options)
                .await?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
            let outbox = SqliteOutbox::new(pool.clone());
            outbox.migrate().await?;
            let store = SqliteStore::from_pool(pool.clone(), url, StoreConfig::default()).await?;
            return Ok(Arc::new(Database::Sqlite(Backend {
                pool,
                outbox,
                store: Arc::new(store),
            })));
        }
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            return Self::connect_postgres(url).await;
        }
        Err(Error::Usage(format!(
            "unknown database URL {}: expected sqlite://… or postgres://…",
            courier::error::redact_url(url)
        )))
    }

    #[cfg(feature = "postgres")]
    async fn connect_postgres(url: &str) -> Result<Arc<Database>> {
        use courier::idempotency::PostgresStore;
        use courier::outbox::postgres::PostgresOutbox;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(POSTGRES_CONNECTIONS)
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let outbox = PostgresOutbox::new(pool.clone());
        outbox.migrate().await?;
        let store = PostgresStore::from_pool(pool.clone(), url, StoreConfig::default()).await?;
        Ok(Arc::new(Database::Postgres(Backend {
            pool,
            outbox,
            store: Arc::new(store),
        })))
    }

    #[cfg(not(feature = "postgres"))]
    async fn connect_postgres(url: &str) -> Result<Arc<Database>> {
        Err(Error::Usage(format!(
            "{} needs the `postgres` feature (cargo run --features postgres …)",
            courier::error::redact_url(url)
        )))
    }

    /// The idempotency store, for an
    /// [`IdempotencyLayer`](courier::idempotency::IdempotencyLayer).
    pub fn store(&self) -> Arc<dyn IdempotencyStore> {
        with_backend!(self, b => b.store.clone())
    }

    /// Starts the outbox relay, publishing committed rows through `broker`.
    /// On SQLite run one per database file (see `courier::outbox`).
    pub fn start_relay(&self, broker: &courier::Broker) -> courier::outbox::RelayHandle {
        let config = courier::outbox::RelayConfig::default()
            .poll_interval(Duration::from_millis(20))
            .batch_size(200)
            .delete_sent(true);
        let publisher = Arc::new(broker.clone());
        with_backend!(self, b => b.outbox.relay(publisher).config(config).start())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        with_backend!(self, b => b.pool.close().await)
    }
}
