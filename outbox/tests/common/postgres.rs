//! An outbox in a table of its own on the shared PostgreSQL container.

use courier_core::Message;
use courier_outbox::TableName;
use courier_outbox::postgres::PostgresOutbox;
use courier_testkit::fixtures::{postgres, unique_name};
use sqlx::postgres::PgPoolOptions;

/// A migrated outbox in a new table, on a pool of its own.
pub async fn outbox() -> PostgresOutbox {
    let server = postgres().await.expect("postgres fixture");
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(server.url())
        .await
        .expect("connect");
    let table = TableName::new(&unique_name("outbox")).expect("table name");
    let outbox = PostgresOutbox::with_table(pool, table);
    outbox.migrate().await.expect("migrate");
    outbox
}

/// Enqueues `messages` in a transaction and commits it.
pub async fn commit(outbox: &PostgresOutbox, topic: &str, messages: Vec<Message>) {
    let mut tx = outbox.pool().begin().await.unwrap();
    outbox
        .enqueue_batch(&mut tx, topic, messages)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}
