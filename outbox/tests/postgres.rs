//! The PostgreSQL outbox on the shared PostgreSQL container (a table of
//! its own per test), relayed to the in-process broker.

mod common;

use courier_core::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::postgres::{commit, outbox};
use common::scenarios::{self, TestOutbox};
use common::{receive, wait_until};
use courier_core::{Message, Publisher, Subscription, async_trait};
use courier_memory::MemoryBroker;
use courier_outbox::postgres::PostgresOutbox;
use courier_outbox::{FailedRow, Relay, RelayConfig, TableName};
use courier_testkit::fixtures::unique_name;

const WAIT: Duration = Duration::from_secs(60);

fn fast() -> RelayConfig {
    RelayConfig::default()
        .poll_interval(Duration::from_millis(50))
        .min_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(50))
}

async fn count_rows(outbox: &PostgresOutbox) -> i64 {
    let sql = format!("SELECT count(*) FROM \"{}\"", outbox.table().table());
    sqlx::query_scalar(&sql)
        .fetch_one(outbox.pool())
        .await
        .expect("count")
}

#[derive(Clone)]
struct Postgres(PostgresOutbox);

#[async_trait]
impl TestOutbox for Postgres {
    async fn commit(&self, topic: &str, messages: Vec<Message>) {
        commit(&self.0, topic, messages).await;
    }

    async fn roll_back(&self, topic: &str, messages: Vec<Message>) {
        let mut tx = self.0.pool().begin().await.unwrap();
        self.0
            .enqueue_batch(&mut tx, topic, messages)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }

    fn relay(&self, publisher: Arc<dyn Publisher>) -> Relay {
        self.0.relay(publisher)
    }

    async fn pending(&self) -> u64 {
        self.0.backlog().await.unwrap().pending
    }

    async fn rows(&self) -> i64 {
        count_rows(&self.0).await
    }

    async fn failed(&self) -> Vec<FailedRow> {
        self.0.failed(10).await.unwrap()
    }

    async fn retry_failed(&self, row: i64) -> bool {
        self.0.retry_failed(row).await.unwrap()
    }
}

#[tokio::test]
async fn rolled_back_messages_are_never_published() {
    scenarios::rolled_back_messages_are_never_published(Postgres(outbox().await), fast()).await;
}

#[tokio::test]
async fn every_message_field_survives_the_trip() {
    scenarios::every_message_field_survives_the_trip(Postgres(outbox().await), fast()).await;
}

/// The first relay's transaction rolls back when it is stopped: its rows
/// are free for the next relay at once.
#[tokio::test]
async fn a_relay_stopped_between_publish_and_mark_publishes_again() {
    scenarios::a_relay_stopped_between_publish_and_mark_publishes_again(
        Postgres(outbox().await),
        fast(),
    )
    .await;
}

#[tokio::test]
async fn refused_rows_are_failed_listed_and_retried() {
    scenarios::refused_rows_are_failed_listed_and_retried(Postgres(outbox().await), fast()).await;
}

#[tokio::test]
async fn sent_rows_are_cleaned_up_in_batches() {
    scenarios::sent_rows_are_cleaned_up_in_batches(Postgres(outbox().await), fast()).await;
}

/// Four transactions take ids 1 to 4, then commit in reverse order (the
/// third rolls back) while the relay runs: a relay that tracked the highest
/// id it had seen would skip 2 and 1 (the bug of Watermill's SQL pub/sub
/// with BIGSERIAL offsets). Every committed row must go out.
#[tokio::test]
async fn rows_committed_out_of_id_order_are_never_skipped() {
    let outbox = outbox().await;
    let broker = MemoryBroker::new();
    let mut stream = broker
        .subscribe(Subscription::new("reorder", "g"))
        .await
        .unwrap();
    let relay = outbox
        .relay(Arc::new(broker.clone()))
        .config(fast())
        .start();

    let mut txs = Vec::new();
    for i in 1..=4 {
        let mut tx = outbox.pool().begin().await.unwrap();
        outbox
            .enqueue(&mut tx, "reorder", Message::new(format!("tx{i}")))
            .await
            .unwrap();
        txs.push(tx);
    }
    let (tx4, tx3, tx2, tx1) = (
        txs.pop().unwrap(),
        txs.pop().unwrap(),
        txs.pop().unwrap(),
        txs.pop().unwrap(),
    );
    tx4.commit().await.unwrap();
    // The relay has published row 4 before rows 1 and 2 exist for it.
    assert_eq!(
        receive(&mut stream, 1, WAIT).await[0].payload().as_ref(),
        b"tx4"
    );
    tx3.rollback().await.unwrap();
    tx2.commit().await.unwrap();
    assert_eq!(
        receive(&mut stream, 1, WAIT).await[0].payload().as_ref(),
        b"tx2"
    );
    tx1.commit().await.unwrap();
    assert_eq!(
        receive(&mut stream, 1, WAIT).await[0].payload().as_ref(),
        b"tx1"
    );

    let outbox_ = outbox.clone();
    wait_until("no pending rows", WAIT, || {
        let outbox = outbox_.clone();
        async move { outbox.backlog().await.unwrap().pending == 0 }
    })
    .await;
    assert_eq!(count_rows(&outbox).await, 3);
    assert_eq!(relay.shutdown().await.published, 3);
}

/// Two relays share 10,000 rows on 100 keys, committed while they run:
/// every row arrives, none twice, and each key's rows in enqueue order.
#[tokio::test]
async fn two_relays_lose_nothing_and_keep_per_key_order() {
    const KEYS: usize = 100;
    const PER_KEY: usize = 100;
    let outbox = outbox().await;
    let broker = MemoryBroker::new();
    let mut stream = broker
        .subscribe(Subscription::new("shared", "g").prefetch(1024))
        .await
        .unwrap();
    let config = fast().batch_size(200);
    let relays = [
        outbox
            .relay(Arc::new(broker.new_connection()))
            .config(config.clone())
            .start(),
        outbox
            .relay(Arc::new(broker.new_connection()))
            .config(config)
            .start(),
    ];

    // Round n writes the n-th row of every key, 10 transactions of 10 keys.
    for n in 0..PER_KEY {
        for chunk in 0..KEYS / 10 {
            let messages = (chunk * 10..chunk * 10 + 10)
                .map(|k| Message::new(format!("{k}:{n}")).with_key(format!("key-{k}")))
                .collect();
            commit(&outbox, "shared", messages).await;
        }
    }

    let got = receive(&mut stream, KEYS * PER_KEY, Duration::from_secs(30)).await;
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    let mut next: HashMap<usize, usize> = HashMap::new();
    let mut out_of_order = 0;
    for message in &got {
        if !seen.insert(message.id().clone()) {
            duplicates += 1;
            continue;
        }
        let text = std::str::from_utf8(message.payload()).unwrap();
        let (k, n) = text.split_once(':').unwrap();
        let (k, n): (usize, usize) = (k.parse().unwrap(), n.parse().unwrap());
        let expected = next.entry(k).or_default();
        if n != *expected {
            out_of_order += 1;
        }
        *expected = n + 1;
    }
    let lost = KEYS * PER_KEY - seen.len();
    let mut stats = Vec::new();
    for relay in relays {
        stats.push(relay.shutdown().await);
    }
    eprintln!(
        "two relays: {} received, lost {lost}, duplicates {duplicates}, out of order {out_of_order}, \
         published by relay 1: {}, by relay 2: {}",
        got.len(),
        stats[0].published,
        stats[1].published
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicates, 0, "no row is published twice without a failure");
    assert_eq!(out_of_order, 0, "each key's rows arrive in enqueue order");
    assert_eq!(
        stats[0].published + stats[1].published,
        (KEYS * PER_KEY) as u64
    );
    assert_eq!(outbox.backlog().await.unwrap().pending, 0);
}

/// With polling set to an hour, only the NOTIFY sent at commit can wake the
/// relay: five messages committed one after another must all arrive.
#[tokio::test]
async fn notify_at_commit_wakes_the_relay() {
    let outbox = outbox().await;
    let broker = MemoryBroker::new();
    let mut stream = broker
        .subscribe(Subscription::new("wake", "g"))
        .await
        .unwrap();
    let relay = outbox
        .relay(Arc::new(broker.clone()))
        .config(fast().poll_interval(Duration::from_secs(3600)))
        .start();
    let listening = format!("LISTEN \"{}\"", outbox.channel());
    let pool = outbox.pool().clone();
    wait_until("the relay listens", WAIT, || {
        let (pool, listening) = (pool.clone(), listening.clone());
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stat_activity WHERE query = $1")
                .bind(listening)
                .fetch_one(&pool)
                .await
                .unwrap()
                == 1
        }
    })
    .await;
    for i in 0..5 {
        let message = Message::new(format!("m{i}"));
        commit(&outbox, "wake", vec![message.clone()]).await;
        assert_eq!(
            receive(&mut stream, 1, WAIT).await,
            [message],
            "message {i}"
        );
    }
    assert_eq!(relay.shutdown().await.published, 5);
}

#[tokio::test]
async fn concurrent_migrations_and_schema_qualified_tables_work() {
    let base = outbox().await;
    let name = format!("{}.{}", unique_name("schema"), unique_name("outbox"));
    let outbox = PostgresOutbox::with_table(base.pool().clone(), TableName::new(&name).unwrap());
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.migrate().await })
        })
        .collect();
    for run in runs {
        run.await.unwrap().expect("migrate");
    }
    let broker = MemoryBroker::new();
    let mut stream = broker
        .subscribe(Subscription::new("qualified", "g"))
        .await
        .unwrap();
    commit(&outbox, "qualified", vec![Message::new("x")]).await;
    let relay = outbox
        .relay(Arc::new(broker.clone()))
        .config(fast())
        .start();
    assert_eq!(receive(&mut stream, 1, WAIT).await.len(), 1);
    assert_eq!(relay.shutdown().await.published, 1);
}
