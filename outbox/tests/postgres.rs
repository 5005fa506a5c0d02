//! The PostgreSQL outbox on the shared PostgreSQL container (a table of
//! its own per test), relayed to the in-process broker.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{PublishThenHang, full_message, receive, wait_until};
use courier_core::{Message, Subscription};
use courier_memory::{MemoryBroker, MemoryConfig};
use courier_outbox::postgres::PostgresOutbox;
use courier_outbox::{RelayConfig, TableName};
use courier_testkit::fixtures::{postgres, unique_name};
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(60);

/// An outbox in a table of its own on the shared server.
async fn outbox() -> PostgresOutbox {
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

async fn commit(outbox: &PostgresOutbox, topic: &str, messages: Vec<Message>) {
    let mut tx = outbox.pool().begin().await.unwrap();
    outbox
        .enqueue_batch(&mut tx, topic, messages)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn rolled_back_messages_are_never_published() {
    let outbox = outbox().await;
    let broker = MemoryBroker::new();
    let mut stream = broker
        .subscribe(Subscription::new("orders", "g"))
        .await
        .unwrap();
    let relay = outbox
        .relay(Arc::new(broker.clone()))
        .config(fast())
        .start();

    let mut tx = outbox.pool().begin().await.unwrap();
    outbox
        .enqueue(&mut tx, "orders", Message::new("rolled back"))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    commit(&outbox, "orders", vec![Message::new("first")]).await;
    commit(&outbox, "orders", vec![Message::new("second")]).await;

    let got = receive(&mut stream, 2, WAIT).await;
    let texts: Vec<_> = got.iter().map(|m| m.payload().as_ref()).collect();
    assert_eq!(texts, [b"first".as_ref(), b"second"]);
    assert_eq!(
        count_rows(&outbox).await,
        2,
        "the rolled-back row never existed"
    );
    assert_eq!(relay.shutdown().await.published, 2);
}

#[tokio::test]
async fn every_message_field_survives_the_trip() {
    let outbox = outbox().await;
    let broker = MemoryBroker::new();
    let mut stream = broker
        .subscribe(Subscription::new("fields", "g"))
        .await
        .unwrap();
    let sent: Vec<Message> = (0..5).map(full_message).collect();
    commit(&outbox, "fields", sent.clone()).await;
    let relay = outbox
        .relay(Arc::new(broker.clone()))
        .config(fast())
        .start();
    assert_eq!(receive(&mut stream, 5, WAIT).await, sent);
    relay.shutdown().await;
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

/// The relay published, then stopped before it could mark the row (its
/// transaction rolled back): the next relay publishes it again, a
/// duplicate with the same id, never a loss.
#[tokio::test]
async fn a_relay_stopped_between_publish_and_mark_publishes_again() {
    let outbox = outbox().await;
    let broker = MemoryBroker::new();
    let mut stream = broker
        .subscribe(Subscription::new("crash", "g"))
        .await
        .unwrap();
    let published = Arc::new(Notify::new());
    let hanging = Arc::new(PublishThenHang {
        inner: Arc::new(broker.clone()),
        published: published.clone(),
    });
    let first = outbox
        .relay(hanging)
        .config(fast().shutdown_timeout(Duration::from_millis(50)))
        .start();
    let message = Message::new("once").with_key("k");
    commit(&outbox, "crash", vec![message.clone()]).await;

    tokio::time::timeout(WAIT, published.notified())
        .await
        .expect("the first relay publishes");
    assert_eq!(
        first.shutdown().await.published,
        0,
        "the first relay never marked the row"
    );
    assert_eq!(outbox.backlog().await.unwrap().pending, 1);

    let second = outbox
        .relay(Arc::new(broker.clone()))
        .config(fast())
        .start();
    let got = receive(&mut stream, 2, WAIT).await;
    assert_eq!(
        got,
        [message.clone(), message],
        "published again with the same id"
    );
    assert_eq!(second.shutdown().await.published, 1);
    assert_eq!(outbox.backlog().await.unwrap().pending, 0);
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
            .relay(Arc::new(broker.connect()))
            .config(config.clone())
            .start(),
        outbox
            .relay(Arc::new(broker.connect()))
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

/// A message the broker refuses for good is marked failed with the reason,
/// does not hold up the rest, is listed for operators and can be retried.
#[tokio::test]
async fn refused_rows_are_failed_listed_and_retried() {
    let outbox = outbox().await;
    let strict = MemoryBroker::with_config(MemoryConfig::default().max_payload(8));
    let mut stream = strict
        .subscribe(Subscription::new("strict", "g"))
        .await
        .unwrap();
    let big = Message::new("far too large").with_key("a");
    commit(
        &outbox,
        "strict",
        vec![
            Message::new("a1").with_key("a"),
            big.clone(),
            Message::new("a2").with_key("a"),
            Message::new("b1").with_key("b"),
        ],
    )
    .await;

    let relay = outbox
        .relay(Arc::new(strict.clone()))
        .config(fast())
        .start();
    let got = receive(&mut stream, 3, WAIT).await;
    let mut texts: Vec<_> = got.iter().map(|m| m.payload().as_ref()).collect();
    texts.sort();
    assert_eq!(texts, [b"a1".as_ref(), b"a2", b"b1"]);
    let stats = relay.shutdown().await;
    assert_eq!((stats.published, stats.failed), (3, 1));

    let failed = outbox.failed(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].message.as_ref(), Some(&big));
    assert!(
        failed[0].reason.contains("exceeds the limit"),
        "{}",
        failed[0].reason
    );
    assert_eq!(failed[0].attempts, 1);

    assert!(outbox.retry_failed(failed[0].row).await.unwrap());
    assert!(!outbox.retry_failed(failed[0].row).await.unwrap());
    let broker = MemoryBroker::new();
    let mut stream = broker
        .subscribe(Subscription::new("strict", "g"))
        .await
        .unwrap();
    let relay = outbox
        .relay(Arc::new(broker.clone()))
        .config(fast())
        .start();
    assert_eq!(receive(&mut stream, 1, WAIT).await, [big]);
    assert_eq!(relay.shutdown().await.published, 1);
    assert!(outbox.failed(10).await.unwrap().is_empty());
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
async fn sent_rows_are_cleaned_up_in_batches() {
    let outbox = outbox().await;
    let broker = MemoryBroker::new();
    broker
        .provision(&Subscription::new("clean", "g"))
        .await
        .unwrap();
    commit(
        &outbox,
        "clean",
        (0..10).map(|i| Message::new(i.to_string())).collect(),
    )
    .await;
    let config = fast()
        .sent_retention(Duration::ZERO)
        .cleanup_interval(Duration::from_millis(50))
        .cleanup_batch(3);
    let relay = outbox
        .relay(Arc::new(broker.clone()))
        .config(config)
        .start();
    let outbox_ = outbox.clone();
    wait_until("every sent row deleted", WAIT, || {
        let outbox = outbox_.clone();
        async move { count_rows(&outbox).await == 0 }
    })
    .await;
    let stats = relay.shutdown().await;
    assert_eq!((stats.published, stats.cleaned), (10, 10));
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
