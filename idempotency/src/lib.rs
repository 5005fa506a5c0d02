//! courier-idempotency: at-least-once delivery in, exactly-once effects out.
//!
//! Every broker delivers at least once: a message comes again after a nack,
//! a crash before the ack, a lost connection, a rebalance, a publisher that
//! sent it twice. A handler that charges a card must still charge it once.
//! This crate gives consumers a deduplication store and a layer for courier's
//! consumer runtime that uses it.
//!
//! # The claim
//!
//! A worker *claims* a key before it does the work ([`IdempotencyStore`]):
//!
//! | answer | meaning | the worker |
//! |---|---|---|
//! | [`Claim::Claimed`] | the key is yours for a lease | does the work, then [`complete`](IdempotencyStore::complete)s (or [`release`](IdempotencyStore::release)s on failure) |
//! | [`Claim::InProgress`] | another worker holds an unexpired lease | tries again later (not before `until` to be sure) |
//! | [`Claim::AlreadyDone`] | done within the retention, maybe with a stored result | skips the work (a responder answers with the stored result) |
//!
//! Leases expire, so a crashed worker never blocks a key for ever. The
//! [`ClaimToken`] fences: once its lease has ended or another worker has
//! claimed the key, it can neither complete nor release anything
//! ([`Error::LeaseLost`]). Keys ([`IdempotencyKey`]) live in a scope, the
//! consumer group, so that one service's processing never hides a message
//! from another service.
//!
//! # Stores
//!
//! Chosen at run time by URL ([`connect`]), each behind a Cargo feature:
//!
//! | URL | store | feature | shared by processes | clock | in the caller's transaction |
//! |---|---|---|---|---|---|
//! | `memory://` | `MemoryStore`: bounded, TTL eviction | `memory` (default) | no | host | no |
//! | `redis://…` | `RedisStore`: Lua scripts over an owner token | `redis` | yes | Redis (`PEXPIRE`) | no |
//! | `postgres://…`, `postgresql://…` | `PostgresStore`, through sqlx | `postgres` | yes | database | `claim_in` |
//! | `sqlite://…` | `SqliteStore`, through sqlx | `sqlite` | one host | host | `claim_in` |
//!
//! The PostgreSQL and SQLite stores keep one table, `courier_idempotency`,
//! created on connect (or by you: the SQL ships in `migrations/postgres/`
//! and `migrations/sqlite/`, and as `POSTGRES_MIGRATION` /
//! `SQLITE_MIGRATION`):
//!
//! | column | type (PostgreSQL / SQLite) | meaning |
//! |---|---|---|
//! | `scope` | `TEXT` | the consumer group |
//! | `key` | `TEXT` | the message id or business key; primary key with `scope` |
//! | `state` | `TEXT` | `claimed` while a lease runs, `done` once completed |
//! | `owner` | `TEXT` | the claim's owner token |
//! | `expires_at` | `TIMESTAMPTZ` / `INTEGER` (Unix ms) | end of the lease or retention; expired rows count as absent and are deleted in batches |
//! | `result` | `BYTEA` / `BLOB` | the stored result, if any |
//!
//! # Exactly-once effects
//!
//! [`IdempotencyLayer`] wraps a consumer's handler: it claims the message
//! (its id, or a business key) in the group's scope, acks a done message
//! without calling the handler, puts off one another consumer is handling,
//! completes after success and releases after failure. A store that cannot
//! be reached fails the attempt transiently: the message is not acked, never
//! taken as handled. See its docs for the one window this leaves (a handler
//! that succeeded while the store went away runs again).
//!
//! When the handler's effect is a write to PostgreSQL or SQLite, claim in
//! the same transaction instead (`PostgresStore::claim_in`,
//! `SqliteStore::claim_in`): the write and the done mark commit or roll back
//! together, and a concurrent duplicate waits for the first transaction.
//! That is exactly-once with no window.
//!
//! # With the brokers' own deduplication
//!
//! Brokers deduplicate *publishes*; this crate deduplicates *effects*. Which
//! duplicates each removes:
//!
//! | duplicate | JetStream `Nats-Msg-Id` window | Kafka idempotent producer | this crate |
//! |---|---|---|---|
//! | a publish retried after a lost confirm | yes, within the window (courier-nats: 2 min by default) | yes, within the producer's session | yes |
//! | the same message published again by the application (an outbox relay restarted after it published but before it marked the row) | yes, within the window | no: a new send is a new record | yes (same message id) |
//! | redelivery to a consumer (nack, crash before the ack, lost connection, rebalance) | no: it is the same stored message | no | yes |
//! | the same request sent as two messages (two ids) | no | no | with a business key ([`IdempotencyLayer::key_with`]) |
//!
//! courier's NATS adapter publishes the message id as `Nats-Msg-Id`, and its
//! Kafka adapter always uses the idempotent producer; RabbitMQ deduplicates
//! nothing. Broker-side deduplication keeps duplicates out of the stream
//! (less storage and traffic, cleaner replays), but only a consumer-side
//! store turns redeliveries into one effect: use both.
//!
//! # Errors
//!
//! One [`Error`] enum; every variant names the store URL without its
//! password, and [`Error::is_retryable`] tells transient failures (an
//! unreachable store, a timeout) from bad input (an empty or over-long key,
//! a zero lease, an unknown scheme, wrong credentials).
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use courier_idempotency::{Claim, IdempotencyKey};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> courier_idempotency::Result<()> {
//! let store = courier_idempotency::connect("memory://").await?;
//! let key = IdempotencyKey::new("billing", "order-42");
//! match store.claim(&key, Duration::from_secs(30)).await? {
//!     Claim::Claimed(token) => {
//!         // charge the card, once
//!         store.complete(&token, Duration::from_secs(24 * 3600)).await?;
//!     }
//!     Claim::AlreadyDone { .. } => {} // a duplicate: nothing to do
//!     Claim::InProgress { .. } => {}  // someone else is on it: ask again later
//! }
//! # Ok(()) }
//! ```
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
pub use key::{
    ClaimToken, IdempotencyKey, MAX_DURATION, MAX_KEY_LEN, MAX_SCOPE_LEN, check_duration,
};
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
/// | `memory://` | `MemoryStore` (a fresh one) | `memory` (default) |
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
