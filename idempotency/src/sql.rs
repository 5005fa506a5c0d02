//! What the PostgreSQL and SQLite stores share: the table's states, error
//! mapping, time limits and the background cleanup.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use courier_core::ConnectErrorKind;

use crate::error::{Error, Result};
use crate::key::{ClaimToken, IdempotencyKey};
use crate::store::{Claim, system_time_from_millis};

/// `state` of a row whose lease is running.
pub(crate) const CLAIMED: &str = "claimed";
/// `state` of a row whose work is done.
pub(crate) const DONE: &str = "done";

/// A claim attempt may lose a race against a concurrent delete or expiry
/// between its insert and its read; it starts over this many times.
pub(crate) const CLAIM_ROUNDS: usize = 4;

/// The answer for a live row found by a claimer that did not win it.
pub(crate) fn existing(state: &str, expires_at_ms: i64, result: Option<Vec<u8>>) -> Claim {
    if state == DONE {
        Claim::AlreadyDone {
            result: result.map(Bytes::from),
        }
    } else {
        Claim::InProgress {
            until: system_time_from_millis(expires_at_ms),
        }
    }
}

/// The answer for a row the claimer wrote itself.
pub(crate) fn won(key: &IdempotencyKey, owner: String, expires_at_ms: i64) -> Claim {
    Claim::Claimed(ClaimToken::new(
        key.clone(),
        owner,
        system_time_from_millis(expires_at_ms),
    ))
}

/// The error for a claim that kept losing races.
pub(crate) fn claim_raced(url: &str) -> Error {
    Error::Store {
        url: url.to_owned(),
        operation: "claim",
        retryable: true,
        source: format!("the row kept changing between insert and read ({CLAIM_ROUNDS} rounds)")
            .into(),
    }
}

/// `1` when one row was affected, otherwise the token's claim is gone.
pub(crate) fn one_row(url: &str, token: &ClaimToken, rows: u64) -> Result<()> {
    if rows == 1 {
        Ok(())
    } else {
        Err(token.lost(url))
    }
}

/// Runs a database operation with the store's time limit.
pub(crate) async fn bounded<T>(
    url: &str,
    operation: &'static str,
    limit: Duration,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, work).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::Timeout {
            url: url.to_owned(),
            operation,
            after: limit,
        }),
    }
}

/// The database's error code, if it sent one.
fn code(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether trying the operation again may succeed.
fn retryable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(_) => {
            let code = code(error).unwrap_or_default();
            // PostgreSQL: connection exceptions, serialization failures and
            // deadlocks, lock timeouts, shutdowns, too many connections.
            let postgres = code.starts_with("08")
                || code.starts_with("40")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "55P03";
            // SQLite: SQLITE_BUSY and SQLITE_LOCKED, extended codes included.
            let sqlite = code
                .parse::<u32>()
                .is_ok_and(|code| matches!(code & 0xff, 5 | 6));
            postgres || sqlite
        }
        _ => false,
    }
}

/// A failed operation.
pub(crate) fn store_error(url: &str, operation: &'static str, error: sqlx::Error) -> Error {
    Error::Store {
        url: url.to_owned(),
        operation,
        retryable: retryable(&error),
        source: Box::new(error),
    }
}

/// A failed connection attempt, by kind.
pub(crate) fn connect_error(url: &str, error: sqlx::Error) -> Error {
    let kind = match &error {
        sqlx::Error::Configuration(_) => {
            return Error::InvalidUrl {
                url: url.to_owned(),
                reason: error.to_string(),
            };
        }
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectErrorKind::Refused,
            std::io::ErrorKind::TimedOut => ConnectErrorKind::TimedOut,
            std::io::ErrorKind::NotFound
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
            | std::io::ErrorKind::AddrNotAvailable => ConnectErrorKind::Unreachable,
            _ => ConnectErrorKind::Other,
        },
        sqlx::Error::Tls(_) => ConnectErrorKind::Tls,
        sqlx::Error::PoolTimedOut => ConnectErrorKind::TimedOut,
        sqlx::Error::Protocol(_) => ConnectErrorKind::Protocol,
        sqlx::Error::Database(_) => match code(&error).as_deref() {
            // invalid_password, invalid_authorization_specification
            Some("28P01" | "28000") => ConnectErrorKind::Authentication,
            // insufficient_privilege
            Some("42501") => ConnectErrorKind::Authorization,
            // invalid_catalog_name (no such database); SQLITE_CANTOPEN
            Some("3D000" | "14") => ConnectErrorKind::NotFound,
            _ => ConnectErrorKind::Other,
        },
        _ => ConnectErrorKind::Other,
    };
    Error::Connect {
        url: url.to_owned(),
        kind,
        source: Some(Box::new(error)),
    }
}

/// A failed schema creation.
pub(crate) fn migrate_error(url: &str, error: sqlx::Error) -> Error {
    Error::Migrate {
        url: url.to_owned(),
        source: Box::new(error),
    }
}

/// The background task that deletes expired rows; stopped when dropped.
#[derive(Debug)]
pub(crate) struct Cleaner(tokio::task::JoinHandle<()>);

impl Cleaner {
    /// Runs `purge` every `interval`, logging failures, until dropped.
    pub(crate) fn spawn<F, Fut>(url: String, interval: Duration, purge: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64>> + Send,
    {
        Cleaner(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                match purge().await {
                    Ok(0) => {}
                    Ok(rows) => {
                        tracing::debug!(store = %url, rows, "deleted expired idempotency rows")
                    }
                    Err(error) => {
                        tracing::warn!(store = %url, %error, "deleting expired idempotency rows failed");
                    }
                }
            }
        }))
    }
}

impl Drop for Cleaner {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Deletes expired rows in batches of `batch` until a batch comes back
/// short; returns how many went.
pub(crate) async fn purge_in_batches<F, Fut>(batch: u32, mut delete_batch: F) -> Result<u64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64>>,
{
    let mut total = 0;
    loop {
        let rows = delete_batch().await?;
        total += rows;
        if rows < u64::from(batch) {
            return Ok(total);
        }
    }
}
