//! The PostgreSQL backend: several relays at once, `FOR UPDATE SKIP
//! LOCKED` claims that keep per-key order, and `LISTEN/NOTIFY` wake-ups.
//!
//! See the [crate docs](crate#postgresql-several-relays) for how relays
//! share the work.

use std::sync::Arc;
use std::time::Duration;

use courier_core::error::redact_url;
use courier_core::{Message, Publisher};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Executor as _, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::relay::Relay;
use crate::row::FailedRow;
use crate::row::{Columns, Row, read_failed_row, read_row, split_readable};
use crate::store::{Backlog, Claim, Outcome, Store};
use crate::table::TableName;

/// The shipped schema (see `migrations/postgres/` in the crate).
pub const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_create_outbox.sql",
    include_str!("../migrations/postgres/0001_create_outbox.sql"),
)];

/// A transactional outbox in a PostgreSQL database.
///
/// Cheap to clone. [`PostgresOutbox::enqueue`] writes into the caller's
/// transaction and sends a NOTIFY that PostgreSQL delivers at commit;
/// [`PostgresOutbox::relay`] publishes what was committed. Any number of
/// relays may run on one table.
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use courier_core::Message;
/// use courier_outbox::postgres::PostgresOutbox;
///
/// # async fn example(publisher: Arc<dyn courier_core::Publisher>) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = PostgresOutbox::connect("postgres://app@localhost/app").await?;
/// outbox.migrate().await?;
/// let relay = outbox.relay(publisher).start();
///
/// let mut tx = outbox.pool().begin().await?;
/// sqlx::query("UPDATE orders SET state = 'placed' WHERE id = 7").execute(&mut *tx).await?;
/// outbox.enqueue(&mut tx, "orders", Message::new("order 7 placed")).await?;
/// tx.commit().await?;
///
/// let stats = relay.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresOutbox {
    store: Arc<PgStore>,
}

#[derive(Debug, Clone)]
struct PgStore {
    pool: PgPool,
    table: TableName,
    name: String,
    notify: bool,
    sql: Arc<Statements>,
}

/// The statements, written once for the table.
#[derive(Debug)]
struct Statements {
    insert: String,
    insert_and_notify: String,
    heads: String,
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

/// `seq`, `topic`, then the message's columns in [`Columns`] order.
const MESSAGE_COLUMNS: &str = "seq, topic, message_id, message_key, headers::text, payload, \
    content_type, round(extract(epoch FROM message_timestamp) * 1000)::int8, \
    correlation_id, causation_id";

impl Statements {
    fn new(table: &TableName) -> Self {
        let t = table.quoted();
        let insert = format!(
            "INSERT INTO {t} (topic, message_id, message_key, headers, payload, content_type, \
             message_timestamp, correlation_id, causation_id) \
             SELECT $1, m.id, m.k, m.h::jsonb, m.p, m.ct, \
                    timestamptz 'epoch' + m.ts * interval '1 millisecond', m.corr, m.cause \
             FROM unnest($2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[], \
                         $7::int8[], $8::text[], $9::text[]) \
                  AS m(id, k, h, p, ct, ts, corr, cause)"
        );
        Statements {
            insert_and_notify: format!(
                "WITH inserted AS ({insert} RETURNING 1) SELECT pg_notify($10, '')"
            ),
            insert,
            // The oldest pending row of each topic and key (and every row
            // without a key) that no other relay holds.
            heads: format!(
                "SELECT o.seq, o.topic, o.message_key FROM {t} o \
                 WHERE o.state = 'pending' AND (o.message_key IS NULL OR NOT EXISTS ( \
                     SELECT 1 FROM {t} e WHERE e.state = 'pending' \
                     AND e.message_key IS NOT NULL AND e.topic = o.topic \
                     AND e.message_key = o.message_key AND e.seq < o.seq)) \
                 ORDER BY o.seq LIMIT $1 FOR UPDATE OF o SKIP LOCKED"
            ),
            // The heads, and the pending rows that follow each keyed head
            // (at most $5 per key), first $6 in enqueue order.
            claim: format!(
                "SELECT {MESSAGE_COLUMNS} FROM {t} r \
                 WHERE r.state = 'pending' AND r.seq IN ( \
                     SELECT unnest($1::int8[]) \
                     UNION ALL \
                     SELECT f.seq FROM unnest($2::text[], $3::text[], $4::int8[]) \
                         AS h(topic, message_key, head) \
                     CROSS JOIN LATERAL ( \
                         SELECT e.seq FROM {t} e WHERE e.state = 'pending' \
                         AND e.message_key IS NOT NULL AND e.topic = h.topic \
                         AND e.message_key = h.message_key AND e.seq > h.head \
                         ORDER BY e.seq LIMIT $5) f) \
                 ORDER BY r.seq LIMIT $6 FOR UPDATE OF r SKIP LOCKED"
            ),
            mark_sent: format!(
                "UPDATE {t} SET state = 'sent', sent_at = clock_timestamp(), \
                 attempts = attempts + 1, last_error = NULL WHERE seq = ANY($1)"
            ),
            delete_sent_rows: format!("DELETE FROM {t} WHERE seq = ANY($1)"),
            mark_failed: format!(
                "UPDATE {t} SET state = 'failed', failed_at = clock_timestamp(), \
                 attempts = attempts + 1, last_error = f.reason \
                 FROM unnest($1::int8[], $2::text[]) AS f(seq, reason) WHERE {t}.seq = f.seq"
            ),
            record_error: format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = $2 WHERE seq = ANY($1)"
            ),
            backlog: format!(
                "SELECT count(*), COALESCE(round(extract(epoch FROM \
                 clock_timestamp() - min(enqueued_at)) * 1000), 0)::int8 \
                 FROM {t} WHERE state = 'pending'"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE state = 'sent' \
                 AND sent_at < clock_timestamp() - $1::float8 * interval '1 millisecond' \
                 ORDER BY sent_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
            failed: format!(
                "SELECT {MESSAGE_COLUMNS}, last_error, attempts, \
                 round(extract(epoch FROM failed_at) * 1000)::int8 FROM {t} \
                 WHERE state = 'failed' ORDER BY seq LIMIT $1"
            ),
            retry: format!(
                "UPDATE {t} SET state = 'pending', failed_at = NULL \
                 WHERE seq = $1 AND state = 'failed'"
            ),
        }
    }
}

impl PostgresOutbox {
    /// An outbox in the default table `courier_outbox` of `pool`'s database.
    pub fn new(pool: PgPool) -> Self {
        Self::with_table(pool, TableName::default())
    }

    /// An outbox in `table` (`name` or `schema.name`).
    pub fn with_table(pool: PgPool, table: TableName) -> Self {
        let options = pool.connect_options();
        let name = format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        PostgresOutbox {
            store: Arc::new(PgStore {
                sql: Arc::new(Statements::new(&table)),
                pool,
                table,
                name,
                notify: true,
            }),
        }
    }

    /// Connects a pool of up to 10 connections to `url`, for an outbox in
    /// the default table.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] naming the URL without its password.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(url)
            .await
            .map_err(Error::database(&redact_url(url), "connect"))?;
        Ok(Self::new(pool))
    }

    /// Whether [`PostgresOutbox::enqueue`] sends the NOTIFY that wakes
    /// relays at commit (on by default). Off, relays find rows by polling
    /// only; a NOTIFY serialises committing transactions briefly on
    /// PostgreSQL's notification queue, which very write-heavy databases
    /// may want to avoid.
    pub fn notify_on_enqueue(self, on: bool) -> Self {
        let mut store = (*self.store).clone();
        store.notify = on;
        PostgresOutbox {
            store: Arc::new(store),
        }
    }

    /// The pool the outbox works on.
    pub fn pool(&self) -> &PgPool {
        &self.store.pool
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.store.table
    }

    /// The NOTIFY channel: the table's name without its schema.
    pub fn channel(&self) -> &str {
        self.store.table.table()
    }

    /// Creates the schema (for a qualified name), the table and its
    /// indexes if they do not exist: the SQL of [`MIGRATIONS`] written for
    /// this table, under an advisory lock so that services starting
    /// together do not race. Safe to run at every start.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when a statement fails.
    pub async fn migrate(&self) -> Result<()> {
        let store = &self.store;
        let error = || store.error("migrate");
        let mut tx = store.pool.begin().await.map_err(error())?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("courier-outbox migrate {}", store.table))
            .execute(&mut *tx)
            .await
            .map_err(error())?;
        if let Some(schema) = store.table.schema() {
            let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
            (&mut *tx).execute(sql.as_str()).await.map_err(error())?;
        }
        for (_, sql) in MIGRATIONS {
            let sql = store.table.rewrite(sql);
            (&mut *tx).execute(sql.as_str()).await.map_err(error())?;
        }
        tx.commit().await.map_err(error())
    }

    /// Writes `message` for `topic` into the caller's transaction, and
    /// NOTIFYs the relays (delivered at commit). The relay sees the row
    /// once the transaction commits; a rollback removes it as if it never
    /// was.
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
        tx: &mut PgConnection,
        topic: &str,
        message: Message,
    ) -> Result<()> {
        self.enqueue_batch(tx, topic, [message]).await
    }

    /// Writes several messages for `topic` into the caller's transaction,
    /// in order, with one statement.
    ///
    /// # Errors
    ///
    /// As [`PostgresOutbox::enqueue`].
    ///
    /// # Cancel safety
    ///
    /// As [`PostgresOutbox::enqueue`].
    pub async fn enqueue_batch(
        &self,
        tx: &mut PgConnection,
        topic: &str,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<()> {
        courier_core::name::validate_topic(topic)?;
        let store = &self.store;
        let mut c = ColumnArrays::default();
        for message in messages {
            c.push(Columns::of(&message));
        }
        if c.ids.is_empty() {
            return Ok(());
        }
        let sql = if store.notify {
            &store.sql.insert_and_notify
        } else {
            &store.sql.insert
        };
        let query = sqlx::query(sql)
            .bind(topic)
            .bind(c.ids)
            .bind(c.keys)
            .bind(c.headers)
            .bind(c.payloads)
            .bind(c.content_types)
            .bind(c.timestamps)
            .bind(c.correlation_ids)
            .bind(c.causation_ids);
        let query = if store.notify {
            query.bind(store.table.table())
        } else {
            query
        };
        query
            .execute(&mut *tx)
            .await
            .map_err(store.error("enqueue"))?;
        Ok(())
    }

    /// A relay that publishes this outbox's rows through `publisher`. Any
    /// number may run on one table, in one process or many.
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

    /// Puts a failed row back to pending and wakes the relays. Returns
    /// whether `row` was a failed row.
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
        if done.rows_affected() == 1 && store.notify {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(store.table.table())
                .execute(&store.pool)
                .await
                .map_err(store.error("retry a failed row"))?;
        }
        Ok(done.rows_affected() == 1)
    }
}

/// The columns of several messages, one array per column, for `unnest`.
#[derive(Default)]
struct ColumnArrays {
    ids: Vec<String>,
    keys: Vec<Option<String>>,
    headers: Vec<String>,
    payloads: Vec<Vec<u8>>,
    content_types: Vec<Option<String>>,
    timestamps: Vec<i64>,
    correlation_ids: Vec<Option<String>>,
    causation_ids: Vec<Option<String>>,
}

impl ColumnArrays {
    fn push(&mut self, c: Columns) {
        self.ids.push(c.message_id);
        self.keys.push(c.message_key);
        self.headers.push(c.headers);
        self.payloads.push(c.payload);
        self.content_types.push(c.content_type);
        self.timestamps.push(c.timestamp_ms);
        self.correlation_ids.push(c.correlation_id);
        self.causation_ids.push(c.causation_id);
    }
}

impl PgStore {
    fn error(&self, operation: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        Error::database(&self.name, operation)
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn claim(&self, limit: usize) -> Result<Box<dyn Claim>> {
        let error = || self.error("claim");
        let mut tx = self.pool.begin().await.map_err(error())?;
        let heads: Vec<(i64, String, Option<String>)> = sqlx::query_as(&self.sql.heads)
            .bind(limit_param(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(error())?;
        if heads.is_empty() {
            return Ok(Box::new(PgClaim::empty(tx, self)));
        }
        let mut head_seqs = Vec::with_capacity(heads.len());
        let (mut topics, mut keys, mut keyed_heads) = (Vec::new(), Vec::new(), Vec::new());
        for (seq, topic, key) in heads.iter().cloned() {
            head_seqs.push(seq);
            if let Some(key) = key {
                topics.push(topic);
                keys.push(key);
                keyed_heads.push(seq);
            }
        }
        // Followers per key: enough to fill the batch, bounded so that few
        // deep keys do not make the claim read far more than it returns.
        let per_key = limit.div_ceil(heads.len()).max(1);
        let rows = sqlx::query(&self.sql.claim)
            .bind(head_seqs)
            .bind(topics)
            .bind(keys)
            .bind(keyed_heads)
            .bind(limit_param(per_key))
            .bind(limit_param(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(error())?;
        let read = rows
            .iter()
            .map(read_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(error())?;
        let mut claim = PgClaim::empty(tx, self);
        (claim.rows, claim.corrupt) = split_readable(read);
        Ok(Box::new(claim))
    }

    async fn backlog(&self) -> Result<Backlog> {
        let (pending, oldest_ms): (i64, i64) = sqlx::query_as(&self.sql.backlog)
            .fetch_one(&self.pool)
            .await
            .map_err(self.error("read the backlog"))?;
        Ok(Backlog {
            pending: pending.max(0) as u64,
            oldest_pending_age: Duration::from_millis(oldest_ms.max(0) as u64),
        })
    }

    async fn delete_sent(&self, retention: Duration, limit: usize) -> Result<u64> {
        let done = sqlx::query(&self.sql.cleanup)
            .bind(retention.as_secs_f64() * 1000.0)
            .bind(limit_param(limit))
            .execute(&self.pool)
            .await
            .map_err(self.error("clean up sent rows"))?;
        Ok(done.rows_affected())
    }

    fn listen(&self, wake: Arc<Notify>, stop: CancellationToken) -> Option<JoinHandle<()>> {
        let (pool, channel) = (self.pool.clone(), self.table.table().to_owned());
        Some(tokio::spawn(async move {
            tokio::select! {
                () = listen(pool, channel, wake) => {}
                () = stop.cancelled() => {}
            }
        }))
    }
}

/// Wakes `wake` at every notification on `channel`, and after every
/// (re)connection, since notifications sent while it was away are lost.
/// Reconnects forever, backing off; the poll interval covers the gaps.
async fn listen(pool: PgPool, channel: String, wake: Arc<Notify>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "outbox: cannot connect the NOTIFY listener; polling meanwhile");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::warn!(error = %e, "outbox: LISTEN failed; polling meanwhile");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
            continue;
        }
        delay = Duration::from_millis(100);
        wake.notify_one();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => wake.notify_one(),
                // The connection was lost and is made again: catch up.
                Ok(None) => {
                    wake.notify_one();
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox: the NOTIFY listener failed; polling meanwhile");
                    break;
                }
            }
        }
        tokio::time::sleep(delay).await;
    }
}

/// Rows claimed by this relay: the claim's transaction holds their row
/// locks, so no other relay can take them (or, for a keyed head, any later
/// row of that key) until it commits or rolls back.
struct PgClaim {
    tx: Transaction<'static, Postgres>,
    name: String,
    sql: Arc<Statements>,
    rows: Vec<Row>,
    corrupt: Vec<(i64, String)>,
}

impl PgClaim {
    fn empty(tx: Transaction<'static, Postgres>, store: &PgStore) -> Self {
        PgClaim {
            tx,
            name: store.name.clone(),
            sql: store.sql.clone(),
            rows: Vec::new(),
            corrupt: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl Claim for PgClaim {
    fn rows(&self) -> &[Row] {
        &self.rows
    }

    fn corrupt(&self) -> &[(i64, String)] {
        &self.corrupt
    }

    async fn finish(self: Box<Self>, outcome: &Outcome, delete_sent: bool) -> Result<()> {
        let PgClaim {
            mut tx, name, sql, ..
        } = *self;
        let run = async {
            if !outcome.sent.is_empty() {
                let statement = if delete_sent {
                    &sql.delete_sent_rows
                } else {
                    &sql.mark_sent
                };
                sqlx::query(statement)
                    .bind(&outcome.sent)
                    .execute(&mut *tx)
                    .await?;
            }
            if !outcome.failed.is_empty() {
                let (rows, reasons): (Vec<i64>, Vec<String>) =
                    outcome.failed.iter().cloned().unzip();
                sqlx::query(&sql.mark_failed)
                    .bind(rows)
                    .bind(reasons)
                    .execute(&mut *tx)
                    .await?;
            }
            if let (false, Some(reason)) = (outcome.unsent.is_empty(), &outcome.error) {
                sqlx::query(&sql.record_error)
                    .bind(&outcome.unsent)
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        };
        run.await.map_err(Error::database(&name, "mark rows"))
    }
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
