//! What both example tests need: the two setups they run on.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use courier::Broker;
use courier_examples::Database;
use courier_testkit::fixtures::{self, unique_name};

/// A broker and a database for one test.
pub struct Setup {
    pub name: &'static str,
    pub broker: Broker,
    pub db: Arc<Database>,
    /// A prefix for the test's topics (the real broker is shared).
    pub prefix: String,
    /// Whether the broker drops a publish of a message id it has stored
    /// lately (JetStream's duplicate window): a republished event then
    /// never reaches the consumers.
    pub dedups_publishes: bool,
    sqlite_file: Option<std::path::PathBuf>,
}

impl Setup {
    /// The embedded default: a fresh in-process broker and a fresh SQLite file.
    pub async fn embedded() -> Setup {
        let file = std::env::temp_dir().join(format!("{}.db", unique_name("courier-examples")));
        let db = Database::connect(&format!("sqlite://{}", file.display()))
            .await
            .expect("sqlite");
        Setup {
            name: "memory + sqlite",
            broker: courier::connect("memory://").await.expect("memory broker"),
            db,
            prefix: String::new(),
            dedups_publishes: false,
            sqlite_file: Some(file),
        }
    }

    /// NATS JetStream and PostgreSQL from the shared containers, with a
    /// database of the test's own.
    pub async fn nats_postgres() -> Setup {
        let (nats, postgres) = tokio::join!(fixtures::nats(), fixtures::postgres());
        let (nats, postgres) = (
            nats.expect("nats fixture"),
            postgres.expect("postgres fixture"),
        );
        let name = unique_name("examples");
        let admin = sqlx::PgPool::connect(postgres.url())
            .await
            .expect("postgres");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let url = format!(
            "{}/{name}",
            postgres.url().rsplit_once('/').expect("a path").0
        );
        let db = Database::connect(&url).await.expect("postgres database");
        Setup {
            name: "nats + postgres",
            broker: courier::connect(nats.url()).await.expect("nats broker"),
            db,
            prefix: format!("{name}."),
            dedups_publishes: true,
            sqlite_file: None,
        }
    }

    /// Closes the broker and the database.
    pub async fn close(self) {
        self.db.close().await;
        self.broker.close().await.expect("close broker");
    }
}

impl Drop for Setup {
    /// Removes the SQLite file, also after a failed test.
    fn drop(&mut self) {
        if let Some(file) = &self.sqlite_file {
            courier_examples::cli::remove_database_file(file);
        }
    }
}

/// One number from the database.
pub async fn count(db: &Database, sql: &str, bind: &str) -> i64 {
    let row: (i64,) = match db {
        Database::Sqlite(b) => sqlx::query_as(sql).bind(bind).fetch_one(&b.pool).await,
        Database::Postgres(b) => sqlx::query_as(sql).bind(bind).fetch_one(&b.pool).await,
        _ => unreachable!("a database this test does not know"),
    }
    .expect("count");
    row.0
}
