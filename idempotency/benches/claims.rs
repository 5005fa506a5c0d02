//! Claim + complete latency (p50, p99) and throughput of every store, at
//! concurrency 1 and 32, plus claims inside a transaction (begin, claim_in,
//! commit) for PostgreSQL and SQLite. One run, one table.
//!
//! PostgreSQL and Redis run in containers from the testkit fixtures (skipped
//! with the reason when Docker or the images are missing); SQLite in a temp
//! file (WAL, synchronous FULL), with a pool of 32 connections and of one
//! (`sqlite/1`).
//!
//! `cargo bench -p courier-idempotency --all-features --bench claims`

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_idempotency::{Claim, IdempotencyKey, IdempotencyStore, StoreConfig};

const LEASE: Duration = Duration::from_secs(60);
const RETENTION: Duration = Duration::from_secs(600);

/// One measured run: every operation's latency, and the wall time.
struct Run {
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Run {
    fn percentile(&self, p: f64) -> Duration {
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index]
    }

    fn row(&self, backend: &str, operation: &str, concurrency: usize) {
        println!(
            "{backend:<10} {operation:<22} {concurrency:>4} {:>8} {:>11} {:>11} {:>12.0}",
            self.latencies.len(),
            format_duration(self.percentile(0.5)),
            format_duration(self.percentile(0.99)),
            self.latencies.len() as f64 / self.wall.as_secs_f64(),
        );
    }
}

fn format_duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

/// Runs `operations` calls of `op` (numbered) from `concurrency` tasks.
async fn measure<F, Fut>(operations: usize, concurrency: usize, op: F) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let per_task = operations / concurrency;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for n in 0..per_task {
                    let began = Instant::now();
                    op(task * per_task + n).await;
                    latencies.push(began.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(operations);
    for task in tasks {
        latencies.extend(task.await.expect("bench task"));
    }
    let wall = started.elapsed();
    latencies.sort_unstable();
    Run { latencies, wall }
}

/// Claim + complete of fresh keys: warm-up, then concurrency 1 and 32.
async fn claim_complete(backend: &str, store: Arc<dyn IdempotencyStore>, operations: usize) {
    for concurrency in [0, 1, 32] {
        // Concurrency 0 is the warm-up: prepared statements, connections.
        let (count, tasks) = if concurrency == 0 {
            (200, 4)
        } else {
            (operations, concurrency)
        };
        let scope = format!("bench-{}-{concurrency}", std::process::id());
        let store = store.clone();
        let run = measure(count, tasks, move |n| {
            let (store, key) = (store.clone(), IdempotencyKey::new(&scope, format!("m{n}")));
            async move {
                let Claim::Claimed(token) = store.claim(&key, LEASE).await.expect("claim") else {
                    panic!("fresh key not claimed");
                };
                store.complete(&token, RETENTION).await.expect("complete");
            }
        })
        .await;
        if concurrency > 0 {
            run.row(backend, "claim+complete", concurrency);
        }
    }
}

/// Begin, claim_in, commit: for the SQL stores.
macro_rules! in_transaction {
    ($backend:expr, $store:expr, $operations:expr) => {{
        let store = $store;
        for concurrency in [0, 1, 32] {
            let (count, tasks) = if concurrency == 0 {
                (200, 4)
            } else {
                ($operations, concurrency)
            };
            let scope = format!("bench-tx-{}-{concurrency}", std::process::id());
            let store = store.clone();
            let run = measure(count, tasks, move |n| {
                let (store, key) = (store.clone(), IdempotencyKey::new(&scope, format!("m{n}")));
                async move {
                    let mut tx = store.pool().begin().await.expect("begin");
                    let claim = store.claim_in(&mut tx, &key).await.expect("claim_in");
                    assert!(claim.is_claimed(), "{claim:?}");
                    tx.commit().await.expect("commit");
                }
            })
            .await;
            if concurrency > 0 {
                run.row($backend, "in transaction", concurrency);
            }
        }
    }};
}

fn config() -> StoreConfig {
    StoreConfig::default()
        .max_connections(32)
        .cleanup_interval(None)
}

async fn run_all() {
    println!(
        "{:<10} {:<22} {:>4} {:>8} {:>11} {:>11} {:>12}",
        "store", "operation", "conc", "ops", "p50", "p99", "ops/s"
    );
    let memory = courier_idempotency::connect_with("memory://", config())
        .await
        .expect("memory store");
    claim_complete("memory", memory, 200_000).await;

    // SQLite allows one writer at a time: with a pool of several
    // connections, waiting writers sleep in SQLite's busy handler (1 to
    // 100 ms steps); with one connection they queue in the pool instead.
    #[cfg(feature = "sqlite")]
    for (label, connections) in [("sqlite", 32), ("sqlite/1", 1)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let store =
            courier_idempotency::SqliteStore::connect(&url, config().max_connections(connections))
                .await
                .expect("sqlite store");
        let store = Arc::new(store);
        claim_complete(label, store.clone(), 4_000).await;
        in_transaction!(label, store, 4_000);
    }

    #[cfg(feature = "postgres")]
    match courier_testkit::fixtures::postgres().await {
        Ok(server) => {
            let store = courier_idempotency::PostgresStore::connect(server.url(), config())
                .await
                .expect("postgres store");
            let store = Arc::new(store);
            claim_complete("postgres", store.clone(), 10_000).await;
            in_transaction!("postgres", store, 10_000);
        }
        Err(e) => println!("postgres   skipped: {e}"),
    }

    #[cfg(feature = "redis")]
    match courier_testkit::fixtures::redis().await {
        Ok(server) => {
            let store = courier_idempotency::connect_with(server.url(), config())
                .await
                .expect("redis store");
            claim_complete("redis", store, 20_000).await;
        }
        Err(e) => println!("redis      skipped: {e}"),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "courier-idempotency: claim+complete of fresh keys, and begin+claim_in+commit; 2 worker threads"
    );
    println!(
        "targets on 2 cores: memory p99 <= 50 µs; redis p50 <= 0.3 ms; postgres/sqlite in transaction p99 <= 5 ms"
    );
    runtime.block_on(run_all());
}
