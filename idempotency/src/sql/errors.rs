//! Time limits and sqlx errors mapped to the crate's.

use std::future::Future;
use std::time::Duration;

use courier_core::ConnectErrorKind;

use crate::error::{Error, Result};

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
