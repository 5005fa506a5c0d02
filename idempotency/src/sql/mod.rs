//! What the PostgreSQL and SQLite stores share: the claim protocol over one
//! table, written once over a [`Dialect`] that holds each database's SQL.
//!
//! The table (see `migrations/`) has one row per scope and key: `state`
//! (`claimed` or `done`), the `owner` token, `expires_at` (end of the lease
//! or retention; an expired row counts as absent) and an optional `result`.
//! A claim is one `INSERT … ON CONFLICT DO UPDATE … WHERE expired`: the
//! unique key lets exactly one concurrent claimer win, and takes over an
//! expired row in the same statement. A claimer that did not win reads the
//! live row to tell `InProgress` from `AlreadyDone`. Complete and release
//! name the owner, which fences a worker whose lease ended.

mod cleanup;
mod errors;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use sqlx::Pool;
use sqlx::pool::PoolConnection;

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::key::{ClaimToken, IdempotencyKey, check_duration};
use crate::store::{Claim, system_time_from_millis};
use cleanup::Cleaner;
pub(crate) use errors::{bounded, connect_error};
use errors::{migrate_error, store_error};

/// `state` of a row whose lease is running.
const CLAIMED: &str = "claimed";
/// `state` of a row whose work is done.
const DONE: &str = "done";

/// A claim may lose a race against a concurrent delete or expiry between
/// its insert and its read; it starts over this many times.
const CLAIM_ROUNDS: usize = 4;

/// A live row as [`Dialect::live_row`] reads it: state, expiry in
/// milliseconds since the Unix epoch, result.
pub(crate) type LiveRow = (String, i64, Option<Vec<u8>>);

/// What differs between the databases: the SQL, the clock, and the
/// migration. Durations are whole milliseconds.
pub(crate) trait Dialect: sqlx::Database {
    /// Writes `key`'s row as `state` for `millis`, owned by `owner`, unless
    /// a live row holds it; returns the new expiry if it wrote.
    fn claim_row<'a>(
        conn: &'a mut Self::Connection,
        key: &'a IdempotencyKey,
        state: &'static str,
        owner: &'a str,
        millis: i64,
    ) -> BoxFuture<'a, sqlx::Result<Option<i64>>>;

    /// `key`'s live row, if any.
    fn live_row<'a>(
        conn: &'a mut Self::Connection,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, sqlx::Result<Option<LiveRow>>>;

    /// Marks the token's row done for `millis` with `result`. With
    /// `in_transaction`, only the mark `claim_in` wrote in this transaction;
    /// otherwise the token's live claim, or its done mark again. Returns
    /// the rows affected.
    fn complete<'a>(
        conn: &'a mut Self::Connection,
        token: &'a ClaimToken,
        millis: i64,
        result: Option<Bytes>,
        in_transaction: bool,
    ) -> BoxFuture<'a, sqlx::Result<u64>>;

    /// Deletes the token's live claim; returns the rows affected.
    fn release<'a>(
        conn: &'a mut Self::Connection,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, sqlx::Result<u64>>;

    /// Deletes up to `batch` expired rows; returns how many went.
    fn purge_batch(pool: &Pool<Self>, batch: i64) -> BoxFuture<'_, sqlx::Result<u64>>;

    /// Creates the table and its index if they are missing.
    fn migrate(pool: &Pool<Self>) -> BoxFuture<'_, sqlx::Result<()>>;
}

/// A store over one database's pool; `PostgresStore` and `SqliteStore`
/// wrap it.
#[derive(Debug)]
pub(crate) struct SqlStore<DB: Dialect> {
    pool: Pool<DB>,
    url: String,
    config: StoreConfig,
    _cleaner: Option<Cleaner>,
}

impl<DB: Dialect> SqlStore<DB> {
    /// A store on `pool`, named `url` (redacted) in errors: creates the
    /// table unless [`StoreConfig::migrate`] is off, starts the cleanup.
    pub(crate) async fn new(pool: Pool<DB>, url: String, config: StoreConfig) -> Result<Self> {
        let mut store = SqlStore {
            pool,
            url,
            config,
            _cleaner: None,
        };
        if store.config.migrate {
            store.migrate().await?;
        }
        if let Some(interval) = store.config.cleanup_interval {
            let (pool, url) = (store.pool.clone(), store.url.clone());
            let batch = store.config.cleanup_batch;
            store._cleaner = Some(Cleaner::spawn(url.clone(), interval, move || {
                let (pool, url) = (pool.clone(), url.clone());
                async move { purge(&pool, &url, batch).await }
            }));
        }
        Ok(store)
    }

    pub(crate) fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) async fn migrate(&self) -> Result<()> {
        DB::migrate(&self.pool)
            .await
            .map_err(|e| migrate_error(&self.url, e))
    }

    pub(crate) async fn purge_expired(&self) -> Result<u64> {
        purge(&self.pool, &self.url, self.config.cleanup_batch).await
    }

    pub(crate) async fn claim(&self, key: &IdempotencyKey, lease: Duration) -> Result<Claim> {
        key.check(&self.url)?;
        let lease = millis(&self.url, "lease", lease)?;
        self.on_connection("claim", |mut conn| async move {
            claim_on::<DB>(&mut conn, &self.url, key, CLAIMED, lease).await
        })
        .await
    }

    pub(crate) async fn complete(
        &self,
        token: &ClaimToken,
        retention: Duration,
        result: Option<Bytes>,
    ) -> Result<()> {
        let retention = millis(&self.url, "retention", retention)?;
        let rows = self
            .on_connection("complete", |mut conn| async move {
                DB::complete(&mut conn, token, retention, result, false)
                    .await
                    .map_err(|e| store_error(&self.url, "complete", e))
            })
            .await?;
        self.one_row(token, rows)
    }

    pub(crate) async fn release(&self, token: &ClaimToken) -> Result<()> {
        let rows = self
            .on_connection("release", |mut conn| async move {
                DB::release(&mut conn, token)
                    .await
                    .map_err(|e| store_error(&self.url, "release", e))
            })
            .await?;
        self.one_row(token, rows)
    }

    /// Claims inside the caller's transaction, writing the done mark at once
    /// (see `PostgresStore::claim_in`). Not bounded by the operation
    /// timeout: waiting for another transaction is the point.
    pub(crate) async fn claim_in(
        &self,
        conn: &mut DB::Connection,
        key: &IdempotencyKey,
    ) -> Result<Claim> {
        key.check(&self.url)?;
        let retention = millis(&self.url, "retention", self.config.transaction_retention)?;
        claim_on::<DB>(conn, &self.url, key, DONE, retention).await
    }

    pub(crate) async fn complete_in(
        &self,
        conn: &mut DB::Connection,
        token: &ClaimToken,
        retention: Duration,
        result: Option<Bytes>,
    ) -> Result<()> {
        let retention = millis(&self.url, "retention", retention)?;
        let rows = DB::complete(conn, token, retention, result, true)
            .await
            .map_err(|e| store_error(&self.url, "complete", e))?;
        self.one_row(token, rows)
    }

    /// Runs `work` on a pooled connection within the operation timeout
    /// (which covers waiting for the connection too).
    async fn on_connection<T, Fut>(
        &self,
        operation: &'static str,
        work: impl FnOnce(PoolConnection<DB>) -> Fut,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let limit = self.config.operation_timeout;
        bounded(&self.url, operation, limit, async {
            let conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| store_error(&self.url, operation, e))?;
            work(conn).await
        })
        .await
    }

    /// `Ok` when one row was affected; otherwise the token's claim is gone.
    fn one_row(&self, token: &ClaimToken, rows: u64) -> Result<()> {
        if rows == 1 {
            Ok(())
        } else {
            Err(token.lost(&self.url))
        }
    }
}

/// A checked duration in milliseconds, as the databases take it.
fn millis(url: &str, what: &'static str, duration: Duration) -> Result<i64> {
    let millis = check_duration(url, what, duration)?;
    Ok(i64::try_from(millis).expect("at most 10 years"))
}

/// Claims `key` on `conn`, writing `state` for `millis` if it wins.
async fn claim_on<DB: Dialect>(
    conn: &mut DB::Connection,
    url: &str,
    key: &IdempotencyKey,
    state: &'static str,
    millis: i64,
) -> Result<Claim> {
    let failed = |e| store_error(url, "claim", e);
    for _ in 0..CLAIM_ROUNDS {
        let owner = ClaimToken::fresh_owner();
        let won = DB::claim_row(conn, key, state, &owner, millis)
            .await
            .map_err(failed)?;
        if let Some(expires_at) = won {
            let until = system_time_from_millis(expires_at);
            return Ok(Claim::Claimed(ClaimToken::new(key.clone(), owner, until)));
        }
        match DB::live_row(conn, key).await.map_err(failed)? {
            Some((state, _, result)) if state == DONE => {
                return Ok(Claim::AlreadyDone {
                    result: result.map(Bytes::from),
                });
            }
            Some((_, expires_at, _)) => {
                return Ok(Claim::InProgress {
                    until: system_time_from_millis(expires_at),
                });
            }
            // Deleted or expired since the insert: try again.
            None => {}
        }
    }
    Err(Error::Store {
        url: url.to_owned(),
        operation: "claim",
        retryable: true,
        source: format!("the row kept changing between insert and read ({CLAIM_ROUNDS} rounds)")
            .into(),
    })
}

/// Deletes expired rows in batches until a batch comes back short.
async fn purge<DB: Dialect>(pool: &Pool<DB>, url: &str, batch: u32) -> Result<u64> {
    let mut total = 0;
    loop {
        let rows = DB::purge_batch(pool, i64::from(batch))
            .await
            .map_err(|e| store_error(url, "purge", e))?;
        total += rows;
        if rows < u64::from(batch) {
            return Ok(total);
        }
    }
}

/// Implements [`IdempotencyStore`](crate::IdempotencyStore) for a type
/// whose `inner` field is a [`SqlStore`].
macro_rules! sql_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::IdempotencyStore for $store {
            async fn claim(
                &self,
                key: &$crate::key::IdempotencyKey,
                lease: std::time::Duration,
            ) -> $crate::error::Result<$crate::store::Claim> {
                self.inner.claim(key, lease).await
            }

            async fn complete_with_result(
                &self,
                token: &$crate::key::ClaimToken,
                retention: std::time::Duration,
                result: Option<bytes::Bytes>,
            ) -> $crate::error::Result<()> {
                self.inner.complete(token, retention, result).await
            }

            async fn release(&self, token: &$crate::key::ClaimToken) -> $crate::error::Result<()> {
                self.inner.release(token).await
            }

            fn url(&self) -> &str {
                self.inner.url()
            }
        }
    };
}

pub(crate) use sql_store;
