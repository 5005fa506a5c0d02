//! Settings of the stores, and the URL schemes that choose one.

use std::time::Duration;

/// Settings of a store. Each applies to the backends its doc names; the
/// others ignore it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_idempotency::StoreConfig;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier_idempotency::Result<()> {
/// let config = StoreConfig::default()
///     .max_keys(10_000)
///     .operation_timeout(Duration::from_secs(2));
/// let store = courier_idempotency::connect_with("memory://", config).await?;
/// assert_eq!(store.url(), "memory://");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub(crate) max_keys: usize,
    pub(crate) key_prefix: String,
    pub(crate) migrate: bool,
    pub(crate) cleanup_interval: Option<Duration>,
    pub(crate) cleanup_batch: u32,
    pub(crate) transaction_retention: Duration,
    pub(crate) max_connections: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) operation_timeout: Duration,
}

/// Default [`StoreConfig::max_keys`].
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// Default [`StoreConfig::key_prefix`].
pub const DEFAULT_KEY_PREFIX: &str = "courier:idempotency:";
/// Default [`StoreConfig::transaction_retention`]: 7 days.
pub const DEFAULT_TRANSACTION_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_keys: DEFAULT_MAX_KEYS,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            migrate: true,
            cleanup_interval: Some(Duration::from_secs(60)),
            cleanup_batch: 1_000,
            transaction_retention: DEFAULT_TRANSACTION_RETENTION,
            max_connections: 10,
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(5),
        }
    }
}

impl StoreConfig {
    /// Memory: the most keys held at once (default 1,000,000; 0 counts as
    /// 1). Expired entries go first; when the store is full of live
    /// entries, the done mark closest to its expiry is forgotten early
    /// (claims are never evicted; a store full of claims refuses new ones
    /// with [`Error::Full`](crate::Error::Full)).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// Redis: the prefix of every key the store writes (default
    /// `courier:idempotency:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// PostgreSQL, SQLite: whether connecting creates the table if it is
    /// missing (default `true`). Turn it off when the schema is managed
    /// with the SQL files in `migrations/` instead.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// PostgreSQL, SQLite: how often a background task deletes expired
    /// rows (default every 60 s; `None`: never, call `purge_expired`
    /// yourself).
    pub fn cleanup_interval(mut self, interval: Option<Duration>) -> Self {
        self.cleanup_interval = interval;
        self
    }

    /// PostgreSQL, SQLite: rows deleted per statement by the cleanup
    /// (default 1,000; 0 counts as 1), so it never holds long locks.
    pub fn cleanup_batch(mut self, rows: u32) -> Self {
        self.cleanup_batch = rows.max(1);
        self
    }

    /// PostgreSQL, SQLite: how long a done mark written by `claim_in` is
    /// kept (default 7 days).
    pub fn transaction_retention(mut self, retention: Duration) -> Self {
        self.transaction_retention = retention;
        self
    }

    /// PostgreSQL, SQLite: size of the connection pool (default 10; 0
    /// counts as 1). SQLite has one writer at a time: with several
    /// connections, writers that must wait sleep in SQLite's busy handler
    /// (in steps of up to 100 ms); with one, they queue in the pool, which
    /// keeps the tail latency under load much lower (see the benchmark),
    /// at the price of readers queueing too.
    pub fn max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// Redis, PostgreSQL, SQLite: how long connecting (and, for the pools,
    /// waiting for a free connection) may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Redis, PostgreSQL, SQLite: the longest a `claim`, `complete` or
    /// `release` may take before it fails with
    /// [`Error::Timeout`](crate::Error::Timeout) (default 5 s). Claims
    /// inside a caller's transaction are not bounded: they may rightly wait
    /// for another transaction.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }
}

/// A store URL's backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Memory,
    Redis,
    Postgres,
    Sqlite,
}

/// The schemes [`connect`](crate::connect) understands: scheme, backend,
/// Cargo feature.
pub(crate) const SCHEMES: &[(&str, Backend, &str)] = &[
    ("memory", Backend::Memory, "memory"),
    ("redis", Backend::Redis, "redis"),
    ("postgres", Backend::Postgres, "postgres"),
    ("postgresql", Backend::Postgres, "postgres"),
    ("sqlite", Backend::Sqlite, "sqlite"),
];
