//! courier-outbox: the transactional outbox. What a service commits to its
//! database and what it publishes to its broker go together: both, or
//! neither.
//!
//! A service that writes to its database and then publishes has a gap: it
//! may crash, or the broker may be down, after the commit and before the
//! publish (the event is lost), or publish and then roll back (an event
//! about something that never happened). With the outbox, the service
//! writes the message into an outbox table *in the same transaction* as
//! its business data ([`postgres::PostgresOutbox::enqueue`],
//! [`sqlite::SqliteOutbox::enqueue`]). A [`Relay`] publishes committed rows
//! through any courier [`Publisher`](courier_core::Publisher) (so through
//! every adapter), waits for the broker's confirmation, then marks them
//! sent. A rolled-back row never existed; a committed one is published
//! at least once.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use courier_core::prelude::*;
//! use courier_memory::MemoryBroker;
//! use courier_outbox::{RelayConfig, sqlite::SqliteOutbox};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let outbox = SqliteOutbox::connect(&dir.path().join("shop.db")).await?;
//! outbox.migrate().await?;
//! let broker = MemoryBroker::new();
//! let mut shipping = broker.subscribe(Subscription::new("orders", "shipping")).await?;
//! let relay = outbox
//!     .relay(Arc::new(broker.clone()))
//!     .config(RelayConfig::default().batch_size(100))
//!     .start();
//!
//! let mut tx = outbox.pool().begin().await?;
//! sqlx::query("CREATE TABLE orders (id INTEGER)").execute(&mut *tx).await?;
//! sqlx::query("INSERT INTO orders VALUES (7)").execute(&mut *tx).await?;
//! let placed = Message::new(r#"{"order":7}"#).with_key("customer-42");
//! outbox.enqueue(&mut tx, "orders", placed.clone()).await?;
//! tx.commit().await?;
//!
//! let delivery = shipping.next().await.expect("open stream")?;
//! assert_eq!(delivery.message(), &placed); // id, key, headers, timestamp: all kept
//! delivery.ack().await?;
//! assert_eq!(relay.shutdown().await.published, 1);
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - **Never lost.** A row leaves the pending state only after the broker
//!   confirmed it (publisher confirm, JetStream ack, Kafka delivery report)
//!   or refused it for good. A relay that crashes, is stopped past its
//!   shutdown timeout, or loses the database after publishing leaves its
//!   rows pending: they are published again.
//! - **Duplicates only after a failure.** Such a row reaches the broker
//!   twice with the same [`MessageId`](courier_core::MessageId); consumers
//!   dedupe by id (the idempotency store, JetStream's duplicate window).
//!   So does a retryable failure in the middle of a batch (the whole batch
//!   is published again). Without failures, no row is published twice, with
//!   any number of relays.
//! - **Per-key order.** Rows of one topic and key are published in the
//!   order they were enqueued, by one transaction or by transactions that
//!   committed one after the other. Two *concurrent* transactions writing
//!   the same key have no order between them; the relay publishes the rows
//!   as their commits make them visible. Rows without a key have no order.
//! - **Rows committed out of id order are never skipped.** `seq` comes from
//!   a sequence, and a transaction that took a smaller `seq` may commit
//!   after one that took a larger: a relay that remembered "everything up
//!   to `seq` N is done" would skip it (the failure Watermill's SQL pub/sub
//!   had with BIGSERIAL offsets). The relay keeps no such mark: every round
//!   selects pending rows by their state.
//! - **The whole message.** Id, key, headers, payload, content type,
//!   timestamp (milliseconds), correlation and causation ids are stored in
//!   columns and rebuilt exactly. The topic name is checked at enqueue
//!   ([`courier_core::name`]), so a bad name fails the caller's transaction
//!   instead of the relay.
//!
//! # PostgreSQL: several relays
//!
//! Any number of relays (in one process or many) may work on one table.
//! Each round is one transaction that
//!
//! 1. locks, with `FOR UPDATE SKIP LOCKED`, the oldest pending row of every
//!    topic and key (and every pending row without a key) that no other
//!    relay holds, up to the batch size;
//! 2. locks the pending rows that follow each of those keyed rows, as many
//!    as fit in the batch;
//! 3. publishes them, waits for the broker, and marks them sent (or deletes
//!    them) before it commits.
//!
//! Holding a key's oldest pending row reserves the whole key: for any other
//! relay the key's later rows are not the oldest, so it does not take them,
//! and the key's order holds across relays. Keys are spread over relays
//! round by round, so relays share the work as long as there are keys (or
//! rows without a key) to share.
//!
//! Why this and not the alternatives:
//!
//! - *Leadership by an advisory lock* makes every relay but one idle, and
//!   the leader learns that it lost its lock (its session died) only when
//!   it next asks, so two leaders may publish at once during a failover.
//! - *Partitions by key hash* need a fixed partition count and a
//!   membership protocol to spread partitions over relays, and a busy
//!   partition cannot be helped by idle relays.
//! - *Leases* (a `claimed_until` column) need a lease long enough for the
//!   slowest publish: a shorter one duplicates, a longer one delays
//!   recovery.
//!
//! Row locks need none of that: PostgreSQL frees a dead relay's locks the
//! moment its session ends, and nobody else can take a locked row. The
//! cost: a claim keeps a transaction and a pool connection open while it
//! publishes (bounded by [`RelayConfig::publish_timeout`]); each relay also
//! holds one connection for LISTEN. A relay that finds every key held by
//! others reads the pending rows to learn so, which grows with a deep
//! backlog on few keys; add relays for many keys, not for few deep ones.
//!
//! # Latency: LISTEN/NOTIFY, then polling
//!
//! [`postgres::PostgresOutbox::enqueue`] also runs `pg_notify(channel, '')`
//! inside the caller's transaction, so PostgreSQL delivers the notification
//! at commit (or drops it at rollback) and folds the notifications of one
//! transaction into one (the payload is constant). Relays LISTEN on the
//! channel (the table's name) and wake at once. A notification is only a
//! hint: the relay finds rows by querying them, and it also polls every
//! [`RelayConfig::poll_interval`], so a notification lost while the
//! listener reconnected delays rows by one interval at most. SQLite has no
//! notifications: polling is its only mechanism. NOTIFY can be turned off
//! ([`postgres::PostgresOutbox::notify_on_enqueue`]): it makes committing
//! transactions queue briefly on PostgreSQL's notification lock.
//!
//! # Failures
//!
//! - **Broker or database down:** the round fails, its rows stay pending
//!   (their `attempts` and `last_error` record it), and the relay backs off
//!   with jittered exponential delays from [`RelayConfig::min_backoff`] to
//!   [`RelayConfig::max_backoff`], then tries again, forever. A retryable
//!   failure ([`courier_core::Error::is_retryable`]) never fails a row.
//! - **Refused for good** (a topic the broker cannot carry, a payload too
//!   large for it): the row is marked `failed` with the broker's reason, and
//!   the key's later rows go on, as dead-lettering does for consumers. A
//!   batch that a broker refuses is published again one message at a time,
//!   so only the refused rows fail. Operators list them
//!   ([`postgres::PostgresOutbox::failed`]) and put them back
//!   ([`postgres::PostgresOutbox::retry_failed`]); a row that cannot be read
//!   back as a message fails the same way.
//!
//! # Running a relay
//!
//! [`Relay::start`] spawns it and returns a [`RelayHandle`]:
//! [`RelayHandle::shutdown`] stops taking rows, lets the current round
//! finish within [`RelayConfig::shutdown_timeout`] and returns the final
//! [`RelayStats`]; dropping the handle stops the relay too.
//! [`Relay::run_until`] runs it until a signal. [`RelayHandle::stats`]
//! reports published and failed rows, failed rounds, cleaned rows, and the
//! backlog (pending rows and the age of the oldest), refreshed every
//! [`RelayConfig::backlog_interval`]; `backlog()` on the outbox asks the
//! database directly.
//!
//! Sent rows are kept for [`RelayConfig::sent_retention`] and deleted every
//! [`RelayConfig::cleanup_interval`] by statements of at most
//! [`RelayConfig::cleanup_batch`] rows; or deleted at once with
//! [`RelayConfig::delete_sent`].
//!
//! # SQLite: the embedded default
//!
//! **Run one relay per database file.** SQLite has one writer at a time, so
//! a relay must not hold a write transaction while it publishes (every
//! enqueue would wait for the broker). The SQLite relay reads the pending
//! rows, publishes them and marks them in a short write transaction; a
//! second relay on the same file would publish the same rows again.
//!
//! # The table
//!
//! Created by `migrate()` on either backend, or by running the shipped SQL
//! yourself: `migrations/postgres/0001_create_outbox.sql` and
//! `migrations/sqlite/0001_create_outbox.sql` in this crate (also
//! [`postgres::MIGRATIONS`], [`sqlite::MIGRATIONS`]), written for the
//! default name `courier_outbox`; `migrate()` writes the configured
//! [`TableName`] in its place. The statements are idempotent
//! (`IF NOT EXISTS`), so `migrate()` can run at every start; there is no
//! version table.
//!
//! | column              | PostgreSQL    | SQLite  | content |
//! |---------------------|---------------|---------|---------|
//! | `seq`               | `BIGINT` identity | `INTEGER` autoincrement | the row's id, in enqueue order |
//! | `topic`             | `TEXT`        | `TEXT`  | the topic to publish to |
//! | `message_id`        | `TEXT`        | `TEXT`  | the message id (a UUID v7 or foreign text) |
//! | `message_key`       | `TEXT` null   | `TEXT` null | the ordering key |
//! | `headers`           | `JSONB`       | `TEXT` (JSON) | headers as an object of strings, without the two ids below |
//! | `payload`           | `BYTEA`       | `BLOB`  | the payload |
//! | `content_type`      | `TEXT` null   | `TEXT` null | the content type |
//! | `message_timestamp` | `TIMESTAMPTZ` | `INTEGER` (ms) | the message's timestamp |
//! | `correlation_id`    | `TEXT` null   | `TEXT` null | the correlation id |
//! | `causation_id`      | `TEXT` null   | `TEXT` null | the causation id |
//! | `state`             | `TEXT`        | `TEXT`  | `pending`, `sent` or `failed` |
//! | `attempts`          | `INTEGER`     | `INTEGER` | publish attempts so far |
//! | `last_error`        | `TEXT` null   | `TEXT` null | why the last attempt failed |
//! | `enqueued_at`       | `TIMESTAMPTZ` | `INTEGER` (ms) | when the row was written |
//! | `sent_at`           | `TIMESTAMPTZ` null | `INTEGER` null | when the broker confirmed it |
//! | `failed_at`         | `TIMESTAMPTZ` null | `INTEGER` null | when it was marked failed |
//!
//! Partial indexes cover the pending rows (by `seq`, and on PostgreSQL by
//! topic, key and `seq`), the sent rows (by `sent_at`, for cleanup) and the
//! failed rows.
//!
//! # Performance
//!
//! `cargo bench -p courier-outbox --all-features --bench relay` prints relay throughput
//! and commit-to-publish latency. One run on a shared 2-core machine, dev
//! profile (`--profile dev`), PostgreSQL 15 and NATS 2.9 in containers,
//! batches of 1,000:
//!
//! | case | result |
//! |------|--------|
//! | PostgreSQL to memory, no key, mark sent | 25,890 rows/s |
//! | PostgreSQL to memory, no key, delete sent | 31,075 rows/s |
//! | PostgreSQL to memory, 1,000 keys, mark sent | 9,726 rows/s |
//! | PostgreSQL to NATS JetStream, no key | 11,706 rows/s |
//! | SQLite to memory, no key, mark sent | 33,026 rows/s |
//! | commit to publish, NOTIFY | p50 1.7 ms, p99 9.3 ms |
//! | commit to publish, polling every 0.5 s | p50 252 ms, p99 497 ms |
//!
//! Keyed rows cost more: the claim checks, for every candidate row, that no
//! older pending row of its key exists, and reads each key's followers.
//!
//! # Features
//!
//! - `sqlite` (default): [`sqlite::SqliteOutbox`].
//! - `postgres`: [`postgres::PostgresOutbox`].
//!
//! Both need sqlx 0.8 with the tokio runtime; TLS for PostgreSQL comes
//! from the application's own sqlx features.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without a backend there is nothing to relay from: the shared parts are unused.
#![cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]

mod config;
mod error;
mod publish;
mod relay;
mod row;
mod stats;
mod store;
mod table;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use config::RelayConfig;
pub use error::{Error, Result};
pub use relay::{Relay, RelayHandle};
pub use row::FailedRow;
pub use stats::RelayStats;
pub use store::Backlog;
pub use table::{DEFAULT_TABLE, MAX_TABLE_LEN, TableName};
