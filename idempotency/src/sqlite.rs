//! The SQLite store, through sqlx.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use courier_core::error::redact_url;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};

use crate::config::StoreConfig;
use crate::error::Result;
use crate::key::{ClaimToken, IdempotencyKey, check_duration};
use crate::sql::{self, CLAIM_ROUNDS, CLAIMED, Cleaner, DONE};
use crate::store::{Claim, IdempotencyStore, now_millis};

/// The schema, as shipped in `migrations/sqlite/`.
pub const SQLITE_MIGRATION: &str =
    include_str!("../migrations/sqlite/0001_courier_idempotency.sql");

/// Claims the key unless a live row holds it; returns the row if it won.
const CLAIM: &str = "INSERT INTO courier_idempotency (scope, key, state, owner, expires_at, result)
     VALUES (?1, ?2, ?3, ?4, ?5 + ?6, NULL)
     ON CONFLICT (scope, key) DO UPDATE
        SET state = excluded.state, owner = excluded.owner,
            expires_at = excluded.expires_at, result = NULL
        WHERE courier_idempotency.expires_at <= ?5
     RETURNING expires_at";

/// The live row of a key.
const LIVE_ROW: &str = "SELECT state, expires_at, result FROM courier_idempotency
     WHERE scope = ?1 AND key = ?2 AND expires_at > ?3";

/// Marks the token's claim done (again, if it already is).
const COMPLETE: &str = "UPDATE courier_idempotency
     SET state = 'done', expires_at = ?4 + ?5, result = ?6
     WHERE scope = ?1 AND key = ?2 AND owner = ?3 AND (state = 'done' OR expires_at > ?4)";

/// Deletes the token's live claim.
const RELEASE: &str = "DELETE FROM courier_idempotency
     WHERE scope = ?1 AND key = ?2 AND owner = ?3 AND state = 'claimed' AND expires_at > ?4";

/// Updates the done mark written by `claim_in` in the same transaction.
const COMPLETE_IN: &str = "UPDATE courier_idempotency
     SET expires_at = ?4 + ?5, result = ?6
     WHERE scope = ?1 AND key = ?2 AND owner = ?3 AND state = 'done'";

/// One batch of the cleanup.
const PURGE_BATCH: &str = "DELETE FROM courier_idempotency WHERE rowid IN (
     SELECT rowid FROM courier_idempotency WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)";

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
    pool: SqlitePool,
    url: String,
    config: StoreConfig,
    _cleaner: Option<Cleaner>,
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
        Self::with_pool(pool, &shown, config).await
    }

    /// A store on an existing pool (the application's own, so that
    /// [`SqliteStore::claim_in`] shares its transactions). `url` names the
    /// database in errors; its password, if any, is not shown.
    ///
    /// # Errors
    ///
    /// [`Error::Migrate`](crate::Error::Migrate) when the table cannot be
    /// created.
    pub async fn from_pool(pool: SqlitePool, url: &str, config: StoreConfig) -> Result<Self> {
        Self::with_pool(pool, &redact_url(url), config).await
    }

    async fn with_pool(pool: SqlitePool, url: &str, config: StoreConfig) -> Result<Self> {
        let mut store = SqliteStore {
            pool,
            url: url.to_owned(),
            config,
            _cleaner: None,
        };
        if store.config.migrate {
            store.migrate().await?;
        }
        if let Some(interval) = store.config.cleanup_interval {
            let (pool, url, batch) = (
                store.pool.clone(),
                store.url.clone(),
                store.config.cleanup_batch,
            );
            store._cleaner = Some(Cleaner::spawn(url.clone(), interval, move || {
                let (pool, url) = (pool.clone(), url.clone());
                async move { purge(&pool, &url, batch).await }
            }));
        }
        Ok(store)
    }

    /// Creates the table and its index if they are missing
    /// ([`SQLITE_MIGRATION`]).
    ///
    /// # Errors
    ///
    /// [`Error::Migrate`](crate::Error::Migrate) with the database's error.
    pub async fn migrate(&self) -> Result<()> {
        sqlx::raw_sql(SQLITE_MIGRATION)
            .execute(&self.pool)
            .await
            .map_err(|e| sql::migrate_error(&self.url, e))?;
        Ok(())
    }

    /// The connection pool, for the application's own queries and
    /// transactions.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Deletes expired rows now, in batches of
    /// [`StoreConfig::cleanup_batch`]; returns how many went.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](crate::Error::Store) with the database's error.
    pub async fn purge_expired(&self) -> Result<u64> {
        purge(&self.pool, &self.url, self.config.cleanup_batch).await
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
    /// [`claim`](IdempotencyStore::claim).
    ///
    /// # Errors
    ///
    /// As [`IdempotencyStore::claim`]; the transaction should be rolled back.
    pub async fn claim_in(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        key: &IdempotencyKey,
    ) -> Result<Claim> {
        key.check(&self.url)?;
        let retention = check_duration(&self.url, "retention", self.config.transaction_retention)?;
        claim_on(tx, &self.url, key, DONE, retention).await
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
        let retention = check_duration(&self.url, "retention", retention)?;
        let rows = settle(&mut **tx, COMPLETE_IN, token, Some((retention, result)))
            .await
            .map_err(|e| sql::store_error(&self.url, "complete", e))?;
        sql::one_row(&self.url, token, rows)
    }

    async fn bounded<T>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        sql::bounded(&self.url, operation, self.config.operation_timeout, work).await
    }
}

/// Claims `key` on `conn`, writing `state` for `millis` if it wins.
async fn claim_on(
    conn: &mut SqliteConnection,
    url: &str,
    key: &IdempotencyKey,
    state: &str,
    millis: u64,
) -> Result<Claim> {
    let millis = i64::try_from(millis).expect("at most 10 years");
    for _ in 0..CLAIM_ROUNDS {
        let owner = ClaimToken::fresh_owner();
        let now = now_millis();
        let won: Option<(i64,)> = sqlx::query_as(CLAIM)
            .bind(key.scope())
            .bind(key.key())
            .bind(state)
            .bind(&owner)
            .bind(now)
            .bind(millis)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| sql::store_error(url, "claim", e))?;
        if let Some((expires_at,)) = won {
            return Ok(sql::won(key, owner, expires_at));
        }
        let live: Option<(String, i64, Option<Vec<u8>>)> = sqlx::query_as(LIVE_ROW)
            .bind(key.scope())
            .bind(key.key())
            .bind(now_millis())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| sql::store_error(url, "claim", e))?;
        if let Some((state, expires_at, result)) = live {
            return Ok(sql::existing(&state, expires_at, result));
        }
    }
    Err(sql::claim_raced(url))
}

/// Runs `statement` (complete, release) for the token's row; returns the
/// rows affected.
async fn settle(
    conn: &mut SqliteConnection,
    statement: &str,
    token: &ClaimToken,
    done: Option<(u64, Option<Bytes>)>,
) -> Result<u64, sqlx::Error> {
    let mut query = sqlx::query(statement)
        .bind(token.key().scope())
        .bind(token.key().key())
        .bind(token.owner())
        .bind(now_millis());
    if let Some((retention, result)) = done {
        query = query
            .bind(i64::try_from(retention).expect("at most 10 years"))
            .bind(result.map(|r| r.to_vec()));
    }
    Ok(query.execute(conn).await?.rows_affected())
}

async fn purge(pool: &SqlitePool, url: &str, batch: u32) -> Result<u64> {
    sql::purge_in_batches(batch, || async {
        sqlx::query(PURGE_BATCH)
            .bind(now_millis())
            .bind(i64::from(batch))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(|e| sql::store_error(url, "purge", e))
    })
    .await
}

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn claim(&self, key: &IdempotencyKey, lease: Duration) -> Result<Claim> {
        key.check(&self.url)?;
        let lease = check_duration(&self.url, "lease", lease)?;
        self.bounded("claim", async {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| sql::store_error(&self.url, "claim", e))?;
            claim_on(&mut conn, &self.url, key, CLAIMED, lease).await
        })
        .await
    }

    async fn complete_with_result(
        &self,
        token: &ClaimToken,
        retention: Duration,
        result: Option<Bytes>,
    ) -> Result<()> {
        let retention = check_duration(&self.url, "retention", retention)?;
        let rows = self
            .bounded("complete", async {
                let mut conn = self
                    .pool
                    .acquire()
                    .await
                    .map_err(|e| sql::store_error(&self.url, "complete", e))?;
                settle(&mut conn, COMPLETE, token, Some((retention, result)))
                    .await
                    .map_err(|e| sql::store_error(&self.url, "complete", e))
            })
            .await?;
        sql::one_row(&self.url, token, rows)
    }

    async fn release(&self, token: &ClaimToken) -> Result<()> {
        let rows = self
            .bounded("release", async {
                let mut conn = self
                    .pool
                    .acquire()
                    .await
                    .map_err(|e| sql::store_error(&self.url, "release", e))?;
                settle(&mut conn, RELEASE, token, None)
                    .await
                    .map_err(|e| sql::store_error(&self.url, "release", e))
            })
            .await?;
        sql::one_row(&self.url, token, rows)
    }

    fn url(&self) -> &str {
        &self.url
    }
}
