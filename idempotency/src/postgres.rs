//! The PostgreSQL store, through sqlx.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use courier_core::error::redact_url;
use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool, Pool, Postgres, Transaction};

use crate::config::StoreConfig;
use crate::error::Result;
use crate::key::{ClaimToken, IdempotencyKey};
use crate::sql::{self, Dialect, LiveRow, SqlStore};
use crate::store::Claim;

/// The schema, as shipped in `migrations/postgres/`.
pub const POSTGRES_MIGRATION: &str =
    include_str!("../migrations/postgres/0001_courier_idempotency.sql");

/// Serialises concurrent migrations of several processes.
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('courier_idempotency'))";

/// Claims the key unless a live row holds it; returns the row if it won.
/// Times are the database's clock (`clock_timestamp()`, not `now()`, which
/// stands still in a long transaction).
const CLAIM: &str = "INSERT INTO courier_idempotency AS t (scope, key, state, owner, expires_at)
     VALUES ($1, $2, $3, $4, clock_timestamp() + $5::float8 * interval '1 millisecond')
     ON CONFLICT (scope, key) DO UPDATE
        SET state = EXCLUDED.state, owner = EXCLUDED.owner,
            expires_at = EXCLUDED.expires_at, result = NULL
        WHERE t.expires_at <= clock_timestamp()
     RETURNING (extract(epoch FROM t.expires_at) * 1000)::int8";

/// The live row of a key.
const LIVE_ROW: &str = "SELECT state, (extract(epoch FROM expires_at) * 1000)::int8, result
     FROM courier_idempotency
     WHERE scope = $1 AND key = $2 AND expires_at > clock_timestamp()";

/// Marks the token's live claim done, or its done mark again.
const COMPLETE: &str = "UPDATE courier_idempotency
     SET state = 'done', expires_at = clock_timestamp() + $4::float8 * interval '1 millisecond',
         result = $5
     WHERE scope = $1 AND key = $2 AND owner = $3
       AND (state = 'done' OR expires_at > clock_timestamp())";

/// Deletes the token's live claim.
const RELEASE: &str = "DELETE FROM courier_idempotency
     WHERE scope = $1 AND key = $2 AND owner = $3 AND state = 'claimed'
       AND expires_at > clock_timestamp()";

/// Updates the done mark written by `claim_in` in the same transaction.
const COMPLETE_IN: &str = "UPDATE courier_idempotency
     SET expires_at = clock_timestamp() + $4::float8 * interval '1 millisecond', result = $5
     WHERE scope = $1 AND key = $2 AND owner = $3 AND state = 'done'";

/// One batch of the cleanup; rows another session holds are left for the
/// next round.
const PURGE_BATCH: &str = "DELETE FROM courier_idempotency WHERE (scope, key) IN (
        SELECT scope, key FROM courier_idempotency WHERE expires_at <= clock_timestamp()
        ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
     AND expires_at <= clock_timestamp()";

impl Dialect for Postgres {
    fn claim_row<'a>(
        conn: &'a mut PgConnection,
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
                .bind(millis)
                .fetch_optional(conn)
                .await?;
            Ok(row.map(|(expires_at,)| expires_at))
        })
    }

    fn live_row<'a>(
        conn: &'a mut PgConnection,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, sqlx::Result<Option<LiveRow>>> {
        Box::pin(
            sqlx::query_as(LIVE_ROW)
                .bind(key.scope())
                .bind(key.key())
                .fetch_optional(conn),
        )
    }

    fn complete<'a>(
        conn: &'a mut PgConnection,
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
                .bind(millis)
                .bind(result.map(|r| r.to_vec()))
                .execute(conn)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn release<'a>(
        conn: &'a mut PgConnection,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, sqlx::Result<u64>> {
        Box::pin(async move {
            let done = sqlx::query(RELEASE)
                .bind(token.key().scope())
                .bind(token.key().key())
                .bind(token.owner())
                .execute(conn)
                .await?;
            Ok(done.rows_affected())
        })
    }

    fn purge_batch(pool: &Pool<Postgres>, batch: i64) -> BoxFuture<'_, sqlx::Result<u64>> {
        Box::pin(async move {
            let done = sqlx::query(PURGE_BATCH).bind(batch).execute(pool).await?;
            Ok(done.rows_affected())
        })
    }

    fn migrate(pool: &Pool<Postgres>) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(async move {
            let mut tx = pool.begin().await?;
            sqlx::query(MIGRATION_LOCK).execute(&mut *tx).await?;
            // A plain `&str` runs unprepared, so it may hold several
            // statements.
            (&mut *tx).execute(POSTGRES_MIGRATION).await?;
            tx.commit().await
        })
    }
}

/// An idempotency store in PostgreSQL (`postgres://`, `postgresql://`),
/// through sqlx: shared by every instance of a service, durable, and able to
/// claim inside the application's own transactions.
///
/// Keys live in the table `courier_idempotency` (see
/// [`POSTGRES_MIGRATION`], shipped as `migrations/postgres/*.sql`), created
/// on connect unless [`StoreConfig::migrate`] is off; the schema is the
/// connection's `search_path` (set `options=-c search_path=…` in the URL to
/// choose another). Leases and retentions run on the database's clock, so
/// workers on hosts whose clocks disagree still agree on them. Expired rows
/// are deleted in batches by a background task
/// ([`StoreConfig::cleanup_interval`]) or by
/// [`PostgresStore::purge_expired`].
///
/// [`PostgresStore::claim_in`] claims inside the caller's transaction: the
/// business write and the done mark commit or roll back together.
///
/// The pool speaks plain TCP: sqlx's TLS features are not enabled by this
/// crate.
///
/// # Examples
///
/// ```no_run
/// use courier_idempotency::{Claim, IdempotencyKey, PostgresStore, StoreConfig};
///
/// # async fn charge(tx: &mut sqlx::PgConnection, order: &str) -> sqlx::Result<()> { Ok(()) }
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect("postgres://app@db/shop", StoreConfig::default()).await?;
/// let key = IdempotencyKey::new("billing", "order-42");
///
/// let mut tx = store.pool().begin().await?;
/// match store.claim_in(&mut tx, &key).await? {
///     Claim::Claimed(_) => charge(&mut tx, "order-42").await?, // once, whatever happens
///     Claim::AlreadyDone { .. } => {}                          // a duplicate
///     Claim::InProgress { .. } => return Err("try again later".into()),
/// }
/// tx.commit().await?; // the charge and the done mark, together
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PostgresStore {
    inner: SqlStore<Postgres>,
}

impl PostgresStore {
    /// Connects to the database at `url`, creates the table unless
    /// [`StoreConfig::migrate`] is off, and starts the cleanup.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`](crate::Error::InvalidUrl) for a URL sqlx cannot
    /// read, [`Error::Connect`](crate::Error::Connect) when the server cannot
    /// be reached or refuses the login (kind `Authentication` for a wrong
    /// password or unknown role, `NotFound` for a missing database),
    /// [`Error::Migrate`](crate::Error::Migrate) when the table cannot be
    /// created.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self> {
        let shown = redact_url(url);
        let options = PgConnectOptions::from_str(url).map_err(|e| sql::connect_error(&shown, e))?;
        // One connection first, so that a refused or failed login is
        // reported as such (the pool would retry a refused one until its
        // timeout).
        let first = sql::bounded(&shown, "connect", config.connect_timeout, async {
            PgConnection::connect_with(&options)
                .await
                .map_err(|e| sql::connect_error(&shown, e))
        })
        .await?;
        let _ = first.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.connect_timeout)
            .connect_lazy_with(options);
        let inner = SqlStore::new(pool, shown, config).await?;
        Ok(PostgresStore { inner })
    }

    /// A store on an existing pool (the application's own, so that
    /// [`PostgresStore::claim_in`] shares its transactions). `url` names the
    /// database in errors; its password is not shown.
    ///
    /// # Errors
    ///
    /// [`Error::Migrate`](crate::Error::Migrate) when the table cannot be
    /// created.
    pub async fn from_pool(pool: PgPool, url: &str, config: StoreConfig) -> Result<Self> {
        let inner = SqlStore::new(pool, redact_url(url), config).await?;
        Ok(PostgresStore { inner })
    }

    /// Creates the table and its index if they are missing
    /// ([`POSTGRES_MIGRATION`]), in a transaction holding an advisory lock,
    /// so that processes starting together do not race.
    ///
    /// # Errors
    ///
    /// [`Error::Migrate`](crate::Error::Migrate) with the database's error.
    pub async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }

    /// The connection pool, for the application's own queries and
    /// transactions.
    pub fn pool(&self) -> &PgPool {
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
    /// A concurrent duplicate blocks in its `INSERT … ON CONFLICT` on the
    /// uncommitted row until this transaction ends, then sees the committed
    /// mark ([`Claim::AlreadyDone`]) or, after a rollback, claims the key
    /// itself. Use the default isolation level (read committed): under
    /// repeatable read or serializable, the duplicate fails with a
    /// serialization error (retryable [`Error::Store`](crate::Error::Store))
    /// instead. [`Claim::InProgress`] comes only from a worker holding a
    /// lease taken with [`claim`](crate::IdempotencyStore::claim).
    ///
    /// Not bounded by [`StoreConfig::operation_timeout`]: waiting for
    /// another transaction is the point. PostgreSQL's `lock_timeout` bounds
    /// it if you need a bound.
    ///
    /// # Errors
    ///
    /// As [`IdempotencyStore::claim`](crate::IdempotencyStore::claim); the
    /// transaction should be rolled back.
    pub async fn claim_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        key: &IdempotencyKey,
    ) -> Result<Claim> {
        self.inner.claim_in(tx, key).await
    }

    /// Replaces the retention of a mark written by
    /// [`PostgresStore::claim_in`] in the same transaction and stores
    /// `result` with it (returned by later claims in [`Claim::AlreadyDone`]).
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) if `token` did not come
    /// from `claim_in` in this transaction.
    pub async fn complete_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        token: &ClaimToken,
        retention: Duration,
        result: Option<Bytes>,
    ) -> Result<()> {
        self.inner.complete_in(tx, token, retention, result).await
    }
}

sql::sql_store!(PostgresStore);
