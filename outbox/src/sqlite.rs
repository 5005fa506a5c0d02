//! The SQLite backend: the embedded default.
//!
//! One relay per database file: SQLite has a single writer, so the relay
//! holds no lock while it publishes; it reads the pending rows, publishes
//! them and marks them in a short write transaction. A second relay on the
//! same file would publish the same rows again (duplicates, never losses).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use courier_core::{Message, Publisher};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Executor as _, SqliteConnection, SqlitePool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::relay::Relay;
use crate::row::FailedRow;
use crate::row::{Columns, Row, read_failed_row, read_row, split_readable};
use crate::store::{Backlog, Claim, Outcome, Store};
use crate::table::TableName;

/// The shipped schema (see `migrations/sqlite/` in the crate).
pub const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_create_outbox.sql",
    include_str!("../migrations/sqlite/0001_create_outbox.sql"),
)];

/// A transactional outbox in a SQLite database.
///
/// Cheap to clone. [`SqliteOutbox::enqueue`] writes into the caller's
/// transaction; [`SqliteOutbox::relay`] publishes what was committed.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use courier_core::prelude::*;
/// use courier_memory::MemoryBroker;
/// use courier_outbox::sqlite::SqliteOutbox;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let outbox = SqliteOutbox::connect(&dir.path().join("app.db")).await?;
/// outbox.migrate().await?;
///
/// let broker = MemoryBroker::new();
/// let mut orders = broker.subscribe(Subscription::new("orders", "billing")).await?;
/// let relay = outbox.relay(Arc::new(broker.clone())).start();
///
/// let mut tx = outbox.pool().begin().await?;
/// // ... the business write, in the same transaction ...
/// outbox.enqueue(&mut tx, "orders", Message::new("order 7 placed")).await?;
/// tx.commit().await?;
///
/// let delivery = orders.next().await.expect("open stream")?;
/// assert_eq!(delivery.message().payload().as_ref(), b"order 7 placed");
/// delivery.ack().await?;
/// let stats = relay.shutdown().await;
/// assert_eq!(stats.published, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteOutbox {
    store: Arc<SqliteStore>,
}

#[derive(Debug)]
struct SqliteStore {
    pool: SqlitePool,
    table: TableName,
    name: String,
    sql: Statements,
}

/// The statements, written once for the table.
#[derive(Debug)]
struct Statements {
    insert: String,
    claim: String,
    mark_sent: String,
    delete_sent_rows: String,
    mark_failed: String,
    record_error: String,
    backlog: String,
    cleanup: String,
    failed: String,
    retry: String,
}

/// The columns that make up a message, in [`Columns`] order, then `seq`
/// and `topic`.
const MESSAGE_COLUMNS: &str = "seq, topic, message_id, message_key, headers, payload, \
    content_type, message_timestamp, correlation_id, causation_id";

impl Statements {
    fn new(table: &TableName) -> Self {
        let t = table.quoted();
        Statements {
            insert: format!(
                "INSERT INTO {t} (topic, message_id, message_key, headers, payload, content_type, \
                 message_timestamp, correlation_id, causation_id, enqueued_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            claim: format!(
                "SELECT {MESSAGE_COLUMNS} FROM {t} WHERE state = 'pending' ORDER BY seq LIMIT ?"
            ),
            mark_sent: format!(
                "UPDATE {t} SET state = 'sent', sent_at = ?, attempts = attempts + 1, \
                 last_error = NULL WHERE seq IN (SELECT value FROM json_each(?))"
            ),
            delete_sent_rows: format!(
                "DELETE FROM {t} WHERE seq IN (SELECT value FROM json_each(?))"
            ),
            mark_failed: format!(
                "UPDATE {t} SET state = 'failed', failed_at = ?, attempts = attempts + 1, \
                 last_error = ? WHERE seq = ?"
            ),
            record_error: format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = ? \
                 WHERE seq IN (SELECT value FROM json_each(?))"
            ),
            backlog: format!("SELECT count(*), min(enqueued_at) FROM {t} WHERE state = 'pending'"),
            cleanup: format!(
                "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE state = 'sent' \
                 AND sent_at < ? ORDER BY sent_at LIMIT ?)"
            ),
            failed: format!(
                "SELECT {MESSAGE_COLUMNS}, last_error, attempts, failed_at FROM {t} \
                 WHERE state = 'failed' ORDER BY seq LIMIT ?"
            ),
            retry: format!(
                "UPDATE {t} SET state = 'pending', failed_at = NULL WHERE seq = ? AND state = 'failed'"
            ),
        }
    }
}

impl SqliteOutbox {
    /// An outbox in the default table `courier_outbox` of `pool`'s database.
    pub fn new(pool: SqlitePool) -> Self {
        Self::with_table(pool, TableName::default())
    }

    /// An outbox in `table`, a plain name (schema-qualified names are for
    /// PostgreSQL).
    pub fn with_table(pool: SqlitePool, table: TableName) -> Self {
        let name = format!(
            "sqlite://{}",
            pool.connect_options().get_filename().display()
        );
        SqliteOutbox {
            store: Arc::new(SqliteStore {
                sql: Statements::new(&table),
                pool,
                table,
                name,
            }),
        }
    }

    /// Opens (creating if missing) the database file at `path` with the
    /// settings an outbox wants: WAL journal, a 5-second busy timeout.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the file cannot be opened.
    pub async fn connect(path: &std::path::Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .map_err(Error::database(
                &format!("sqlite://{}", path.display()),
                "connect",
            ))?;
        Ok(Self::new(pool))
    }

    /// The pool the outbox works on.
    pub fn pool(&self) -> &SqlitePool {
        &self.store.pool
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.store.table
    }

    /// Creates the table and its indexes if they do not exist (the SQL of
    /// [`MIGRATIONS`], written for this table). Safe to run at every start.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when a statement fails.
    pub async fn migrate(&self) -> Result<()> {
        let store = &self.store;
        let mut tx = store.pool.begin().await.map_err(store.error("migrate"))?;
        for (_, sql) in MIGRATIONS {
            let sql = store.table.rewrite(sql);
            (&mut *tx)
                .execute(sql.as_str())
                .await
                .map_err(store.error("migrate"))?;
        }
        tx.commit().await.map_err(store.error("migrate"))
    }

    /// Writes `message` for `topic` into the caller's transaction (or
    /// connection). The relay sees it once the transaction commits; a
    /// rollback removes it as if it never was.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] for a topic name no broker could carry;
    /// [`Error::Database`] when the insert fails.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the row written in the transaction or
    /// not: roll the transaction back.
    pub async fn enqueue(
        &self,
        tx: &mut SqliteConnection,
        topic: &str,
        message: Message,
    ) -> Result<()> {
        self.enqueue_batch(tx, topic, [message]).await
    }

    /// Writes several messages for `topic` into the caller's transaction, in
    /// order.
    ///
    /// # Errors
    ///
    /// As [`SqliteOutbox::enqueue`].
    ///
    /// # Cancel safety
    ///
    /// As [`SqliteOutbox::enqueue`].
    pub async fn enqueue_batch(
        &self,
        tx: &mut SqliteConnection,
        topic: &str,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<()> {
        courier_core::name::validate_topic(topic)?;
        let store = &self.store;
        let now = now_ms();
        for message in messages {
            let c = Columns::of(&message);
            sqlx::query(&store.sql.insert)
                .bind(topic)
                .bind(c.message_id)
                .bind(c.message_key)
                .bind(c.headers)
                .bind(c.payload)
                .bind(c.content_type)
                .bind(c.timestamp_ms)
                .bind(c.correlation_id)
                .bind(c.causation_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(store.error("enqueue"))?;
        }
        Ok(())
    }

    /// A relay that publishes this outbox's rows through `publisher`.
    /// Run one relay per database file.
    pub fn relay(&self, publisher: Arc<dyn Publisher>) -> Relay {
        Relay::new(self.store.clone(), publisher)
    }

    /// How many rows are pending, and the age of the oldest.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the query fails.
    pub async fn backlog(&self) -> Result<Backlog> {
        self.store.backlog().await
    }

    /// The failed rows, oldest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the query fails.
    pub async fn failed(&self, limit: usize) -> Result<Vec<FailedRow>> {
        let store = &self.store;
        let error = || store.error("list failed rows");
        let rows = sqlx::query(&store.sql.failed)
            .bind(limit_param(limit))
            .fetch_all(&store.pool)
            .await
            .map_err(error())?;
        rows.iter()
            .map(|r| read_failed_row(r).map_err(error()))
            .collect()
    }

    /// Puts a failed row back to pending, so the relay publishes it again.
    /// Returns whether `row` was a failed row.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the update fails.
    pub async fn retry_failed(&self, row: i64) -> Result<bool> {
        let store = &self.store;
        let done = sqlx::query(&store.sql.retry)
            .bind(row)
            .execute(&store.pool)
            .await
            .map_err(store.error("retry a failed row"))?;
        Ok(done.rows_affected() == 1)
    }
}

impl SqliteStore {
    fn error(&self, operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        Error::database(&self.name, operation)
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn claim(&self, limit: usize) -> Result<Box<dyn Claim>> {
        let rows = sqlx::query(&self.sql.claim)
            .bind(limit_param(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(self.error("claim"))?;
        let read = rows
            .iter()
            .map(read_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.error("claim"))?;
        let (rows, corrupt) = split_readable(read);
        let claim = SqliteClaim {
            pool: self.pool.clone(),
            name: self.name.clone(),
            sql_mark_sent: self.sql.mark_sent.clone(),
            sql_delete_sent: self.sql.delete_sent_rows.clone(),
            sql_mark_failed: self.sql.mark_failed.clone(),
            sql_record_error: self.sql.record_error.clone(),
            rows,
            corrupt,
        };
        Ok(Box::new(claim))
    }

    async fn backlog(&self) -> Result<Backlog> {
        let (pending, oldest): (i64, Option<i64>) = sqlx::query_as(&self.sql.backlog)
            .fetch_one(&self.pool)
            .await
            .map_err(self.error("read the backlog"))?;
        Ok(Backlog {
            pending: pending.max(0) as u64,
            oldest_pending_age: oldest.map_or(Duration::ZERO, |t| {
                Duration::from_millis(now_ms().saturating_sub(t).max(0) as u64)
            }),
        })
    }

    async fn delete_sent(&self, retention: Duration, limit: usize) -> Result<u64> {
        let before = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
        let done = sqlx::query(&self.sql.cleanup)
            .bind(before)
            .bind(limit_param(limit))
            .execute(&self.pool)
            .await
            .map_err(self.error("clean up sent rows"))?;
        Ok(done.rows_affected())
    }

    fn listen(&self, _wake: Arc<Notify>, _stop: CancellationToken) -> Option<JoinHandle<()>> {
        None
    }
}

/// Rows read by the SQLite relay. No lock is held: the relay is the only
/// one on its file.
struct SqliteClaim {
    pool: SqlitePool,
    name: String,
    sql_mark_sent: String,
    sql_delete_sent: String,
    sql_mark_failed: String,
    sql_record_error: String,
    rows: Vec<Row>,
    corrupt: Vec<(i64, String)>,
}

#[async_trait::async_trait]
impl Claim for SqliteClaim {
    fn rows(&self) -> &[Row] {
        &self.rows
    }

    fn corrupt(&self) -> &[(i64, String)] {
        &self.corrupt
    }

    async fn finish(self: Box<Self>, outcome: &Outcome, delete_sent: bool) -> Result<()> {
        let error = Error::database(&self.name, "mark rows");
        let run = async {
            let mut tx = self.pool.begin().await?;
            let now = now_ms();
            if !outcome.sent.is_empty() {
                let ids = json_ids(&outcome.sent);
                if delete_sent {
                    sqlx::query(&self.sql_delete_sent)
                        .bind(ids)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    sqlx::query(&self.sql_mark_sent)
                        .bind(now)
                        .bind(ids)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            for (seq, reason) in &outcome.failed {
                sqlx::query(&self.sql_mark_failed)
                    .bind(now)
                    .bind(reason)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
            }
            if let (false, Some(reason)) = (outcome.unsent.is_empty(), &outcome.error) {
                sqlx::query(&self.sql_record_error)
                    .bind(reason)
                    .bind(json_ids(&outcome.unsent))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        };
        run.await.map_err(error)
    }
}

fn json_ids(ids: &[i64]) -> String {
    serde_json::Value::from(ids.to_vec()).to_string()
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
