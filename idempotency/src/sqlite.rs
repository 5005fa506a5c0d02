//! The SQLite store, through sqlx.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use courier_core::error::redact_url;
use futures::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Pool, Sqlite, SqliteConnection, SqlitePool, Transaction};

use crate::config::StoreConfig;
use crate::error::Result;
use crate::key::{ClaimToken, IdempotencyKey};
use crate::sql::{self, Dialect, LiveRow, SqlStore};
use crate::store::{Claim, now_millis};

/// The schema, as shipped in `migrations/sqlite/`.
pub const SQLITE_MIGRATION: &str =
    include_str!("../migrations/sqlite/0001_courier_idempotency.sql");

/// Writes the key's row unless a live row holds it; returns it if it wrote.
/// Times are the host's clock, in milliseconds (`?5`: now).
const CLAIM: &str = "INSERT INTO courier_idempotency (scope, key, state, owner, expires_at)
     VALUES (?1, ?2, ?3, ?4, ?5 + ?6)
     ON CONFLICT (scope, key) DO UPDATE
        SET state = excluded.state, owner = excluded.owner,
            expires_at = excluded.expires_at, result = NULL
        WHERE courier_idempotency.expires_at <= ?5
     RETURNING expires_at";

/// The live row of a key.
const LIVE_ROW: &str = "SELECT state, expires_at, result FROM courier_idempotency
     WHERE scope = ?1 AND key = ?2 AND expires_at > ?3";

/// Marks the token's live claim done, or its done mark again.
const COMPLETE: &str = "UPDATE courier_idempotency
     SET state = 'done', expires_at = ?4 + ?5, result = ?6
     WHERE scope = ?1 AND key = ?2 AND owner = ?3 AND (state = 'done' OR expires_at > ?4)";

/// Updates the done mark written by `claim_in` in the same transaction.
const COMPLETE_IN: &str = "UPDATE courier_idempotency
     SET expires_at = ?4 + ?5, result = ?6
     WHERE scope = ?1 AND key = ?2 AND owner = ?3 AND state = 'done'";

/// Deletes the token's live claim.
const RELEASE: &str = "DELETE FROM courier_idempotency
     WHERE scope = ?1 AND key = ?2 AND owner = ?3 AND state = 'claimed' AND expires_at > ?4";

/// One batch of the cleanup.
const PURGE_BATCH: &str = "DELETE FROM courier_idempotency WHERE rowid IN (
     SELECT rowid FROM courier_idempotency WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)";

impl Dialect for Sqlite {
    fn claim_row<'a>(
        conn: &'a mut SqliteConnection,
        key: &'a IdempotencyKey,
        state: &'static str,
        owner: &'a str,
        millis: i64,
    ) -> BoxFuture<'a, sqlx::Result<Option<i64>>> {
        Box::pin(async move {
            let row: Option<(i64,)> = sqlx::query_as(CLAIM)
                .bind(key.scope())
                .bind(key.key())
                .bind(state)
                .bind(owner)
                .bind(now_millis())
                .bind(millis)
                .fetch_optional(conn)
                .await?;
            Ok(row.map(|(expires_at,)| expires_at))
        })
    }

    fn live_row<'a>(
        conn: &'a mut SqliteConnection,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, sqlx::Result<Option<LiveRow>>> {
        Box::pin(
            sqlx::query_as(LIVE_ROW)
                .bind(key.scope())
                .bind(key.key())
                .bind(now_millis())
                .fetch_optional(conn),
        )
    }

    fn complete<'a>(
        conn: &'a mut SqliteConnection,
        token: &'a ClaimToken,
        millis: i64,
        result: Option<Bytes>,
        in_transaction: bool,
    ) -> BoxFuture<'a, sqlx::Result<u64>> {
        let statement = if in_transaction {
            COMPLETE_IN
        } else {
            COMPLETE
        };
        Box::pin(async move {
            let done = sqlx::query(statement)
                .bind(token.key().scope())
                .bind(token.key().key())
                .bind(token.owner())
                .bind(now_millis())
                .bind(millis)
                .bind(result.map(|r| r.to_vec()))
                .execute(conn)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn release<'a>(
        conn: &'a mut SqliteConnection,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, sqlx::Result<u64>> {
        Box::pin(async move {
            let done = sqlx::query(RELEASE)
                .bind(token.key().scope())
                .bind(token.key().key())
                .bind(token.owner())
                .bind(now_millis())
                .execute(conn)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn purge_batch(pool: &Pool<Sqlite>, batch: i64) -> BoxFuture<'_, sqlx::Result<u64>> {
        Box::pin(async move {
            let done = sqlx::query(PURGE_BATCH)
                .bind(now_millis())
                .bind(batch)
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn migrate(pool: &Pool<Sqlite>) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(async move {
            sqlx::raw_sql(SQLITE_MIGRATION).execute(pool).await?;
            Ok(())
        })
    }
}

/// An idempotency store in a SQLite database (`sqlite://path`), through
/// sqlx: for single-host services whose own data lives in SQLite.
///
/// Keys live in the table `courier_idempotency` (see
/// [`SQLITE_MIGRATION`], shipped as `migrations/sqlite/*.sql`), created on
/// connect unless [`StoreConfig::migrate`] is off. Times are the host's
/// clock, in milliseconds. The database is opened in WAL mode with a busy
/// timeout of [`StoreConfig::operation_timeout`], so writers queue instead of
/// failing. Expired rows are deleted in batches by a background task
/// ([`StoreConfig::cleanup_interval`]) or by [`SqliteStore::purge_expired`].
///
/// [`SqliteStore::claim_in`] claims inside the caller's transaction: the
/// business write and the done mark commit or roll back together.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_idempotency::{Claim, IdempotencyKey, SqliteStore, StoreConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let url = format!("sqlite://{}", dir.path().join("app.db").display());
/// let store = SqliteStore::connect(&url, StoreConfig::default()).await?;
/// sqlx::raw_sql("CREATE TABLE payments (order_id TEXT NOT NULL)")
///     .execute(store.pool())
///     .await?;
///
/// let key = IdempotencyKey::new("billing", "order-42");
/// for _delivery in 0..3 {
///     let mut tx = store.pool().begin().await?;
///     if let Claim::Claimed(_) = store.claim_in(&mut tx, &key).await? {
///         sqlx::query("INSERT INTO payments VALUES ('order-42')")
///             .execute(&mut *tx)
///             .await?;
///     }
///     tx.commit().await?;
/// }
/// let (payments,): (i64,) = sqlx::query_as("SELECT count(*) FROM payments")
///     .fetch_one(store.pool())
///     .await?;
/// assert_eq!(payments, 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SqliteStore {
    inner: SqlStore<Sqlite>,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `url`
    /// (`sqlite://path`, `sqlite::memory:`), creates the table unless
    /// [`StoreConfig::migrate`] is off, and starts the cleanup.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`](crate::Error::InvalidUrl) for a URL sqlx cannot
    /// read, [`Error::Connect`](crate::Error::Connect) when the file cannot
    /// be opened, [`Error::Migrate`](crate::Error::Migrate) when the table
    /// cannot be created.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self> {
        let shown = redact_url(url);
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| sql::connect_error(&shown, e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(config.operation_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.connect_timeout)
            .connect_with(options)
            .await
            .map_err(|e| sql::connect_error(&shown, e))?;
        let inner = SqlStore::new(pool, shown, config).await?;
        Ok(SqliteStore { inner })
    }

    /// A store on an existing pool (the application's own, so that
    /// [`SqliteStore::claim_in`] shares its transactions). `url` names the
    /// database in errors.
    ///
    /// # Errors
    ///
    /// [`Error::Migrate`](crate::Error::Migrate) when the table cannot be
    /// created.
    pub async fn from_pool(pool: SqlitePool, url: &str, config: StoreConfig) -> Result<Self> {
        let inner = SqlStore::new(pool, redact_url(url), config).await?;
        Ok(SqliteStore { inner })
    }

    /// Creates the table and its index if they are missing
    /// ([`SQLITE_MIGRATION`]).
    ///
    /// # Errors
    ///
    /// [`Error::Migrate`](crate::Error::Migrate) with the database's error.
    pub async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }

    /// The connection pool, for the application's own queries and
    /// transactions.
    pub fn pool(&self) -> &SqlitePool {
        self.inner.pool()
    }

    /// Deletes expired rows now, in batches of
    /// [`StoreConfig::cleanup_batch`]; returns how many went.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) with the database's error.
    pub async fn purge_expired(&self) -> Result<u64> {
        self.inner.purge_expired().await
    }

    /// Claims `key` inside the caller's transaction `tx` and marks it done
    /// there at once, for [`StoreConfig::transaction_retention`]: the mark
    /// commits with the caller's own writes, or rolls back with them (and
    /// the key is free again). For handlers whose effect is a write to this
    /// database this is exactly-once: do the write only on
    /// [`Claim::Claimed`], then commit.
    ///
    /// A concurrent duplicate waits for SQLite's write lock (up to the busy
    /// timeout, [`StoreConfig::operation_timeout`]) and then sees the
    /// committed mark ([`Claim::AlreadyDone`]) or, after a rollback, claims
    /// the key itself. Call it before anything else in the transaction (or
    /// begin it with `BEGIN IMMEDIATE`): a transaction that has read first
    /// cannot wait for the lock and fails with a retryable
    /// [`Error::Store`](crate::Error::Store) instead. [`Claim::InProgress`]
    /// comes only from a worker holding a lease taken with
    /// [`claim`](crate::IdempotencyStore::claim).
    ///
    /// # Errors
    ///
    /// As [`IdempotencyStore::claim`](crate::IdempotencyStore::claim); the
    /// transaction should be rolled back.
    pub async fn claim_in(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        key: &IdempotencyKey,
    ) -> Result<Claim> {
        self.inner.claim_in(tx, key).await
    }

    /// Replaces the retention of a mark written by
    /// [`SqliteStore::claim_in`] in the same transaction and stores `result`
    /// with it (returned by later claims in [`Claim::AlreadyDone`]).
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) if `token` did not come
    /// from `claim_in` in this transaction.
    pub async fn complete_in(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        token: &ClaimToken,
        retention: Duration,
        result: Option<Bytes>,
    ) -> Result<()> {
        self.inner.complete_in(tx, token, retention, result).await
    }
}

sql::sql_store!(SqliteStore);
