//! Relay throughput and commit-to-publish latency, one run, one table.
//!
//! `cargo bench -p courier-outbox --all-features --bench relay` (PostgreSQL and NATS in
//! containers from the testkit fixtures, SQLite in a temporary file).
//! `--quick` runs smaller sizes.
//!
//! - throughput: rows committed first, then one relay started; rows per
//!   second from its start until it has published them all.
//! - latency: one message per transaction, committed one after another at
//!   random gaps of 2-20 ms; the time from `commit()` returning to the
//!   consumer receiving it, with NOTIFY and with polling only.

use courier_core::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::{Message, Subscription};
use courier_memory::MemoryBroker;
use courier_nats::NatsBroker;
use courier_outbox::postgres::PostgresOutbox;
use courier_outbox::sqlite::SqliteOutbox;
use courier_outbox::{RelayConfig, TableName};
use courier_testkit::fixtures::{self, unique_name};
use futures::StreamExt;
use rand::Rng;
use sqlx::postgres::PgPoolOptions;

struct Line {
    case: String,
    rows: usize,
    result: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 5 } else { 1 };
    let pg = fixtures::postgres().await.expect("postgres fixture");
    let nats = fixtures::nats().await.expect("nats fixture");
    let mut lines = Vec::new();

    let rows = 50_000 / scale;
    for (case, keys, delete) in [
        ("PostgreSQL -> memory, no key, mark sent", 0, false),
        ("PostgreSQL -> memory, no key, delete sent", 0, true),
        ("PostgreSQL -> memory, 1,000 keys, mark sent", 1000, false),
    ] {
        let outbox = pg_outbox(pg.url(), true).await;
        fill_pg(&outbox, rows, keys).await;
        let broker = MemoryBroker::new();
        broker
            .provision(&Subscription::new("bench", "g"))
            .await
            .unwrap();
        let rate = drain(outbox.relay(Arc::new(broker)), rows, delete).await;
        lines.push(Line {
            case: case.into(),
            rows,
            result: format!("{rate:>9.0} rows/s"),
        });
        eprintln!("{case}: {rate:.0} rows/s");
    }

    let nats_rows = 20_000 / scale;
    {
        let outbox = pg_outbox(pg.url(), true).await;
        fill_pg(&outbox, nats_rows, 0).await;
        let broker = NatsBroker::connect(nats.url())
            .await
            .expect("nats")
            .into_broker();
        broker
            .provision(&Subscription::new("bench", "g"))
            .await
            .unwrap();
        let publisher = broker.publisher();
        let rate = drain(outbox.relay(publisher), nats_rows, false).await;
        let case = "PostgreSQL -> NATS JetStream, no key";
        lines.push(Line {
            case: case.into(),
            rows: nats_rows,
            result: format!("{rate:>9.0} rows/s"),
        });
        eprintln!("{case}: {rate:.0} rows/s");
        broker.close().await.ok();
    }

    {
        let dir = tempfile::tempdir().unwrap();
        let outbox = SqliteOutbox::connect(&dir.path().join("bench.db"))
            .await
            .unwrap();
        outbox.migrate().await.unwrap();
        for chunk in 0..rows / 1000 {
            let mut tx = outbox.pool().begin().await.unwrap();
            let messages = (0..1000).map(|i| Message::new(format!("{}", chunk * 1000 + i)));
            outbox
                .enqueue_batch(&mut tx, "bench", messages)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let broker = MemoryBroker::new();
        broker
            .provision(&Subscription::new("bench", "g"))
            .await
            .unwrap();
        let rate = drain(outbox.relay(Arc::new(broker)), rows, false).await;
        let case = "SQLite -> memory, no key, mark sent";
        lines.push(Line {
            case: case.into(),
            rows,
            result: format!("{rate:>9.0} rows/s"),
        });
        eprintln!("{case}: {rate:.0} rows/s");
    }

    let samples = 400 / scale;
    for (case, listen, poll) in [
        ("latency, NOTIFY (poll 1 s)", true, Duration::from_secs(1)),
        (
            "latency, polling only every 0.5 s",
            false,
            Duration::from_millis(500),
        ),
    ] {
        let n = if listen { samples } else { samples / 4 };
        let outbox = pg_outbox(pg.url(), listen).await;
        let (p50, p99, max) = latency(&outbox, n, listen, poll).await;
        let result = format!("p50 {p50:>6.1} ms  p99 {p99:>6.1} ms  max {max:>6.1} ms");
        eprintln!("{case}: {result}");
        lines.push(Line {
            case: case.into(),
            rows: n,
            result,
        });
    }

    println!();
    println!("| {:<45} | {:>7} | {:<45} |", "case", "rows", "result");
    println!("|{:-<47}|{:-<9}|{:-<47}|", "", "", "");
    for line in &lines {
        println!(
            "| {:<45} | {:>7} | {:<45} |",
            line.case, line.rows, line.result
        );
    }
}

async fn pg_outbox(url: &str, notify: bool) -> PostgresOutbox {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(url)
        .await
        .unwrap();
    let table = TableName::new(&unique_name("bench")).unwrap();
    let outbox = PostgresOutbox::with_table(pool, table).notify_on_enqueue(notify);
    outbox.migrate().await.unwrap();
    outbox
}

async fn fill_pg(outbox: &PostgresOutbox, rows: usize, keys: usize) {
    for chunk in 0..rows / 1000 {
        let messages = (0..1000).map(|i| {
            let n = chunk * 1000 + i;
            let message = Message::new(format!("{n}"));
            if keys == 0 {
                message
            } else {
                message.with_key(format!("key-{}", n % keys))
            }
        });
        let mut tx = outbox.pool().begin().await.unwrap();
        outbox
            .enqueue_batch(&mut tx, "bench", messages)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
}

/// Starts a relay over `rows` committed rows and returns rows per second
/// until it has published them all.
async fn drain(relay: courier_outbox::Relay, rows: usize, delete: bool) -> f64 {
    let config = RelayConfig::default().batch_size(1000).delete_sent(delete);
    let started = Instant::now();
    let handle = relay.config(config).start();
    let deadline = started + Duration::from_secs(600);
    while (handle.stats().published as usize) < rows {
        assert!(
            Instant::now() < deadline,
            "relay stalled at {}",
            handle.stats().published
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let stats = handle.shutdown().await;
    assert_eq!(stats.published as usize, rows);
    rows as f64 / elapsed.as_secs_f64()
}

/// Commit-to-receive latencies: p50, p99 and max in milliseconds.
async fn latency(
    outbox: &PostgresOutbox,
    n: usize,
    listen: bool,
    poll: Duration,
) -> (f64, f64, f64) {
    let broker = MemoryBroker::new();
    let mut stream = broker
        .subscribe(Subscription::new("latency", "g"))
        .await
        .unwrap();
    let config = RelayConfig::default().listen(listen).poll_interval(poll);
    let relay = outbox
        .relay(Arc::new(broker.clone()))
        .config(config)
        .start();
    // Let the relay connect its listener and finish its first rounds.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let receiver = tokio::spawn(async move {
        let mut received = Vec::with_capacity(n);
        while received.len() < n {
            let delivery = stream.next().await.expect("open").expect("delivery");
            let i: usize = std::str::from_utf8(delivery.message().payload())
                .unwrap()
                .parse()
                .unwrap();
            received.push((i, Instant::now()));
            delivery.ack().await.unwrap();
        }
        received
    });
    let mut committed = Vec::with_capacity(n);
    let mut rng = rand::rng();
    for i in 0..n {
        let mut tx = outbox.pool().begin().await.unwrap();
        outbox
            .enqueue(&mut tx, "latency", Message::new(i.to_string()))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        committed.push(Instant::now());
        tokio::time::sleep(Duration::from_millis(rng.random_range(2..=20))).await;
    }
    let received = receiver.await.unwrap();
    relay.shutdown().await;
    let mut ms: Vec<f64> = received
        .iter()
        .map(|(i, at)| at.saturating_duration_since(committed[*i]).as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    (pick(0.5), pick(0.99), ms[ms.len() - 1])
}
