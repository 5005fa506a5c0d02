//! courier-idempotency: at-least-once delivery in, exactly-once effects out.
//!
//! Every broker redelivers: after a nack, a crash, a lost connection, a
//! rebalance. A handler that charges a card must not charge it twice. This
//! crate gives consumers a deduplication store with a three-state claim and
//! a consumer-runtime layer that uses it.
//!
//! TODO: crate docs.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
mod key;
mod layer;
#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;

pub use config::{
    DEFAULT_KEY_PREFIX, DEFAULT_MAX_KEYS, DEFAULT_TRANSACTION_RETENTION, StoreConfig,
};
pub use error::{Error, Result};
pub use key::{ClaimToken, IdempotencyKey, MAX_DURATION, MAX_KEY_LEN, MAX_SCOPE_LEN};
pub use layer::{
    ClaimedElsewhere, DEFAULT_LEASE, DEFAULT_RETENTION, IdempotencyLayer, IdempotencyStats,
    Idempotent, MissingKey, OnStoreError,
};
#[cfg(feature = "memory")]
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{POSTGRES_MIGRATION, PostgresStore};
#[cfg(feature = "redis")]
pub use redis::RedisStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{SQLITE_MIGRATION, SqliteStore};
pub use store::{Claim, IdempotencyStore};

/// The sqlx this crate is built with, for the transactions of
/// `claim_in`.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use sqlx;

use std::sync::Arc;

use config::{Backend, SCHEMES};
use courier_core::error::redact_url;

/// Connects to the store named by `url`, with the default [`StoreConfig`].
///
/// | URL | store | feature |
/// |---|---|---|
/// | `memory://` | [`MemoryStore`] (a fresh one) | `memory` (default) |
/// | `redis://[user:password@]host:port[/db]` | `RedisStore` | `redis` |
/// | `postgres://…`, `postgresql://…` | `PostgresStore` | `postgres` |
/// | `sqlite://path`, `sqlite::memory:` | `SqliteStore` | `sqlite` |
///
/// # Errors
///
/// [`Error::InvalidUrl`] for a malformed URL or an unknown scheme,
/// [`Error::FeatureDisabled`] naming the feature when the backend is not
/// compiled in, [`Error::Connect`] when the store cannot be reached or
/// refuses the credentials, [`Error::Migrate`] when the table cannot be
/// created. Every error shows the URL without its password.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = courier_idempotency::connect("memory://").await.expect("memory store");
/// assert_eq!(store.url(), "memory://");
///
/// let err = courier_idempotency::connect("mongodb://app:s3cret@db").await.unwrap_err();
/// assert!(err.to_string().contains("mongodb://app:***@db"));
/// # }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn IdempotencyStore>> {
    connect_with(url, StoreConfig::default()).await
}

/// [`connect`] with settings.
///
/// # Errors
///
/// As [`connect`].
pub async fn connect_with(url: &str, config: StoreConfig) -> Result<Arc<dyn IdempotencyStore>> {
    let backend = backend_of(url)?;
    #[cfg(not(feature = "memory"))]
    let _ = &config;
    match backend {
        #[cfg(feature = "memory")]
        Backend::Memory => {
            if url != "memory://" {
                return Err(Error::InvalidUrl {
                    url: redact_url(url),
                    reason: "a memory store URL is `memory://`, without name or options".into(),
                });
            }
            Ok(Arc::new(MemoryStore::new(config)))
        }
        #[cfg(feature = "redis")]
        Backend::Redis => Ok(Arc::new(RedisStore::connect(url, config).await?)),
        #[cfg(feature = "postgres")]
        Backend::Postgres => Ok(Arc::new(PostgresStore::connect(url, config).await?)),
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => Ok(Arc::new(SqliteStore::connect(url, config).await?)),
        #[allow(unreachable_patterns)]
        other => Err(Error::FeatureDisabled {
            url: redact_url(url),
            feature: SCHEMES
                .iter()
                .find(|(_, backend, _)| *backend == other)
                .map_or("", |(_, _, feature)| feature),
        }),
    }
}

/// The backend a URL names, by its scheme.
fn backend_of(url: &str) -> Result<Backend> {
    let Some((scheme, _)) = url.split_once(':') else {
        return Err(Error::InvalidUrl {
            url: redact_url(url),
            reason: "expected scheme://…".into(),
        });
    };
    match SCHEMES.iter().find(|(s, _, _)| *s == scheme) {
        Some((_, backend, _)) => Ok(*backend),
        None => {
            let known: Vec<&str> = SCHEMES.iter().map(|(s, _, _)| *s).collect();
            Err(Error::InvalidUrl {
                url: redact_url(url),
                reason: format!("unknown scheme {scheme:?}; known: {}", known.join(", ")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_schemes_are_named_without_the_password() {
        let err = connect("mongodb://app:s3cret@db:27017").await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
        assert!(text.contains("mongodb://app:***@db:27017"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("redis") && text.contains("sqlite"), "{text}");
        let err = connect("no scheme here").await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn backends_without_their_feature_name_it() {
        let urls = [
            ("redis://u:pw@h:6379", "redis", cfg!(feature = "redis")),
            (
                "postgres://u:pw@h/db",
                "postgres",
                cfg!(feature = "postgres"),
            ),
            ("sqlite://x.db", "sqlite", cfg!(feature = "sqlite")),
        ];
        for (url, feature, _) in urls.into_iter().filter(|(_, _, on)| !on) {
            match connect(url).await {
                Err(Error::FeatureDisabled { url, feature: f }) => {
                    assert_eq!(f, feature);
                    assert!(!url.contains("pw"), "{url}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
