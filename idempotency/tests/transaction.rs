//! Claims inside the caller's transaction (PostgreSQL and SQLite): the
//! business write and the done mark commit or roll back together.
//!
//! The cases are written once in a macro over the store type, whose
//! transactions differ in type only.
//!
//! `cargo test -p courier-idempotency --all-features --test transaction`

#![cfg(any(feature = "postgres", feature = "sqlite"))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_idempotency::{Claim, IdempotencyKey, IdempotencyStore, StoreConfig};
use courier_testkit::fixtures::unique_name;

const LONG: Duration = Duration::from_secs(60);

macro_rules! transaction_cases {
    ($backend:ident, $store:ty, $connect:expr, $index_query:expr) => {
        mod $backend {
            use super::*;

            /// The store under test and a business table of the test's own.
            async fn setup(
                config: StoreConfig,
            ) -> (Arc<$store>, String, Box<dyn std::any::Any + Send>) {
                let (store, keep) = $connect(config).await;
                let table = unique_name("effects");
                sqlx::raw_sql(&format!("CREATE TABLE {table} (item TEXT NOT NULL)"))
                    .execute(store.pool())
                    .await
                    .expect("business table");
                (Arc::new(store), table, keep)
            }

            async fn effects(store: &$store, table: &str, item: &str) -> i64 {
                let (count,): (i64,) = sqlx::query_as(&format!(
                    "SELECT count(*) FROM {table} WHERE item = '{item}'"
                ))
                .fetch_one(store.pool())
                .await
                .expect("count");
                count
            }

            /// Claims in a transaction and, if claimed, writes the effect;
            /// commits when `commit`, rolls back otherwise. Returns what the
            /// claim answered.
            async fn handle(
                store: &$store,
                table: &str,
                key: &IdempotencyKey,
                commit: bool,
            ) -> Claim {
                let mut tx = store.pool().begin().await.expect("begin");
                let claim = store.claim_in(&mut tx, key).await.expect("claim_in");
                if claim.is_claimed() {
                    sqlx::query(&format!("INSERT INTO {table} VALUES ('{}')", key.key()))
                        .execute(&mut *tx)
                        .await
                        .expect("business write");
                }
                if commit {
                    tx.commit().await.expect("commit");
                } else {
                    tx.rollback().await.expect("rollback");
                }
                claim
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rolled_back_claim_leaves_the_key_claimable() {
                let (store, table, _keep) = setup(StoreConfig::default()).await;
                let key = IdempotencyKey::new(unique_name("g"), "order-1");
                assert!(handle(&store, &table, &key, false).await.is_claimed());
                assert_eq!(effects(&store, &table, "order-1").await, 0);
                // Neither kind of claim sees a trace of the rolled-back one.
                let Claim::Claimed(token) = store.claim(&key, LONG).await.expect("claim") else {
                    panic!("key not free after rollback");
                };
                store.release(&token).await.expect("release");
                assert!(handle(&store, &table, &key, true).await.is_claimed());
                assert_eq!(effects(&store, &table, "order-1").await, 1);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn committed_claim_leaves_the_key_done() {
                let (store, table, _keep) = setup(StoreConfig::default()).await;
                let key = IdempotencyKey::new(unique_name("g"), "order-2");
                assert!(handle(&store, &table, &key, true).await.is_claimed());
                for _ in 0..3 {
                    assert!(handle(&store, &table, &key, true).await.is_done());
                }
                assert!(store.claim(&key, LONG).await.expect("claim").is_done());
                assert_eq!(effects(&store, &table, "order-2").await, 1);
            }

            /// A duplicate claiming while the first transaction is open
            /// waits for it: after a commit it sees the work done, after a
            /// rollback it claims the key itself. Either way the effect
            /// happens once.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_duplicate_waits_for_the_first_transaction() {
                let (store, table, _keep) = setup(StoreConfig::default()).await;
                for commit_first in [true, false] {
                    let key =
                        IdempotencyKey::new(unique_name("g"), format!("order-{commit_first}"));
                    let mut first = store.pool().begin().await.expect("begin");
                    assert!(
                        store
                            .claim_in(&mut first, &key)
                            .await
                            .expect("claim_in")
                            .is_claimed()
                    );
                    sqlx::query(&format!("INSERT INTO {table} VALUES ('{}')", key.key()))
                        .execute(&mut *first)
                        .await
                        .expect("business write");
                    let duplicate = tokio::spawn({
                        let (store, table, key) = (store.clone(), table.clone(), key.clone());
                        async move { handle(&store, &table, &key, true).await }
                    });
                    // Give the duplicate time to reach its claim and block.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    assert!(!duplicate.is_finished(), "the duplicate did not wait");
                    if commit_first {
                        first.commit().await.expect("commit");
                    } else {
                        first.rollback().await.expect("rollback");
                    }
                    let answer = duplicate.await.expect("duplicate");
                    if commit_first {
                        assert!(answer.is_done(), "{answer:?}");
                    } else {
                        assert!(answer.is_claimed(), "{answer:?}");
                    }
                    assert_eq!(effects(&store, &table, key.key()).await, 1);
                }
            }

            /// A worker's lease taken outside a transaction shows as
            /// InProgress to a claim inside one.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lease_outside_shows_inside() {
                let (store, table, _keep) = setup(StoreConfig::default()).await;
                let key = IdempotencyKey::new(unique_name("g"), "leased");
                let Claim::Claimed(token) = store.claim(&key, LONG).await.expect("claim") else {
                    panic!("fresh key not claimed");
                };
                assert!(handle(&store, &table, &key, true).await.is_in_progress());
                store.complete(&token, LONG).await.expect("complete");
                assert!(handle(&store, &table, &key, true).await.is_done());
                assert_eq!(effects(&store, &table, "leased").await, 0);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn result_stored_in_the_transaction_comes_back() {
                let (store, _table, _keep) = setup(StoreConfig::default()).await;
                let key = IdempotencyKey::new(unique_name("g"), "request");
                let mut tx = store.pool().begin().await.expect("begin");
                let Claim::Claimed(token) = store.claim_in(&mut tx, &key).await.expect("claim_in")
                else {
                    panic!("fresh key not claimed");
                };
                store
                    .complete_in(
                        &mut tx,
                        &token,
                        LONG,
                        Some(Bytes::from_static(b"receipt-7")),
                    )
                    .await
                    .expect("complete_in");
                tx.commit().await.expect("commit");
                match store.claim(&key, LONG).await.expect("claim") {
                    Claim::AlreadyDone { result } => {
                        assert_eq!(result.as_deref(), Some(&b"receipt-7"[..]));
                    }
                    other => panic!("expected AlreadyDone, got {other:?}"),
                }
            }

            /// Expired rows are deleted in batches; live ones stay.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn purge_deletes_expired_rows_in_batches() {
                let config = StoreConfig::default()
                    .cleanup_interval(None)
                    .cleanup_batch(7);
                let (store, _table, _keep) = setup(config).await;
                let scope = unique_name("purge");
                for n in 0..30 {
                    let key = IdempotencyKey::new(&scope, format!("k{n}"));
                    let Claim::Claimed(token) = store.claim(&key, LONG).await.expect("claim")
                    else {
                        panic!("fresh key not claimed");
                    };
                    let retention = if n < 20 {
                        Duration::from_millis(1)
                    } else {
                        LONG
                    };
                    store.complete(&token, retention).await.expect("complete");
                }
                let rows = || async {
                    let (count,): (i64,) = sqlx::query_as(&format!(
                        "SELECT count(*) FROM courier_idempotency WHERE scope = '{scope}'"
                    ))
                    .fetch_one(store.pool())
                    .await
                    .expect("count");
                    count
                };
                assert_eq!(rows().await, 30);
                tokio::time::sleep(Duration::from_millis(20)).await;
                let purged = store.purge_expired().await.expect("purge");
                // Other tests' expired rows may go too (a shared server).
                assert!(purged >= 20, "{purged}");
                assert_eq!(rows().await, 10);
                store.migrate().await.expect("migrating again is harmless");
                let (indexes,): (i64,) = sqlx::query_as($index_query)
                    .fetch_one(store.pool())
                    .await
                    .expect("index lookup");
                assert_eq!(indexes, 1, "the migration creates the expiry index");
            }
        }
    };
}

#[cfg(feature = "sqlite")]
async fn sqlite(
    config: StoreConfig,
) -> (
    courier_idempotency::SqliteStore,
    Box<dyn std::any::Any + Send>,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("tx.db").display());
    let store = courier_idempotency::SqliteStore::connect(&url, config)
        .await
        .expect("sqlite store");
    (store, Box::new(dir))
}

#[cfg(feature = "sqlite")]
transaction_cases!(
    sqlite,
    courier_idempotency::SqliteStore,
    sqlite,
    "SELECT count(*) FROM sqlite_master WHERE name = 'courier_idempotency_expires_at'"
);

#[cfg(feature = "postgres")]
async fn postgres(
    config: StoreConfig,
) -> (
    courier_idempotency::PostgresStore,
    Box<dyn std::any::Any + Send>,
) {
    let server = courier_testkit::fixtures::postgres()
        .await
        .expect("postgres fixture");
    let store = courier_idempotency::PostgresStore::connect(server.url(), config)
        .await
        .expect("postgres store");
    (store, Box::new(server))
}

#[cfg(feature = "postgres")]
transaction_cases!(
    postgres,
    courier_idempotency::PostgresStore,
    postgres,
    "SELECT count(*) FROM pg_indexes WHERE indexname = 'courier_idempotency_expires_at'"
);
