//! The SQLite outbox in a temporary database file, relayed to the
//! in-process broker.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{PublishThenHang, Switchable, full_message, receive, wait_until};
use courier_core::{Message, Subscription};
use courier_memory::{MemoryBroker, MemoryConfig};
use courier_outbox::sqlite::SqliteOutbox;
use courier_outbox::{RelayConfig, TableName};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(30);

struct Fixture {
    _dir: tempfile::TempDir,
    outbox: SqliteOutbox,
    broker: MemoryBroker,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = SqliteOutbox::connect(&dir.path().join("outbox.db"))
        .await
        .expect("open");
    outbox.migrate().await.expect("migrate");
    Fixture {
        _dir: dir,
        outbox,
        broker: MemoryBroker::new(),
    }
}

fn fast() -> RelayConfig {
    RelayConfig::default()
        .poll_interval(Duration::from_millis(20))
        .min_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(50))
}

async fn count_rows(outbox: &SqliteOutbox) -> i64 {
    let sql = format!("SELECT count(*) FROM \"{}\"", outbox.table().table());
    sqlx::query_scalar(&sql)
        .fetch_one(outbox.pool())
        .await
        .expect("count")
}

#[tokio::test]
async fn rolled_back_messages_are_never_published() {
    let f = fixture().await;
    let mut stream = f
        .broker
        .subscribe(Subscription::new("orders", "g"))
        .await
        .unwrap();
    let relay = f
        .outbox
        .relay(Arc::new(f.broker.clone()))
        .config(fast())
        .start();

    let mut tx = f.outbox.pool().begin().await.unwrap();
    f.outbox
        .enqueue(&mut tx, "orders", Message::new("rolled back"))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    for text in ["first", "second"] {
        let mut tx = f.outbox.pool().begin().await.unwrap();
        f.outbox
            .enqueue(&mut tx, "orders", Message::new(text))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    let got = receive(&mut stream, 2, WAIT).await;
    let texts: Vec<_> = got.iter().map(|m| m.payload().as_ref()).collect();
    assert_eq!(texts, [b"first".as_ref(), b"second"]);
    assert_eq!(
        count_rows(&f.outbox).await,
        2,
        "the rolled-back row never existed"
    );
    let stats = relay.shutdown().await;
    assert_eq!(stats.published, 2);
}

#[tokio::test]
async fn every_message_field_survives_the_trip() {
    let f = fixture().await;
    let mut stream = f
        .broker
        .subscribe(Subscription::new("fields", "g"))
        .await
        .unwrap();
    let sent: Vec<Message> = (0..5).map(full_message).collect();
    let mut tx = f.outbox.pool().begin().await.unwrap();
    f.outbox
        .enqueue_batch(&mut tx, "fields", sent.clone())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let relay = f
        .outbox
        .relay(Arc::new(f.broker.clone()))
        .config(fast())
        .start();
    let got = receive(&mut stream, 5, WAIT).await;
    assert_eq!(got, sent);
    relay.shutdown().await;
}

#[tokio::test]
async fn invalid_topics_are_refused_at_enqueue() {
    let f = fixture().await;
    let mut tx = f.outbox.pool().begin().await.unwrap();
    let err = f
        .outbox
        .enqueue(&mut tx, "orders created", Message::new("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, courier_outbox::Error::InvalidTopic(_)),
        "{err}"
    );
}

/// The relay published, then stopped before it could mark the row: the
/// next relay publishes it again (a duplicate with the same id), never
/// loses it.
#[tokio::test]
async fn a_relay_stopped_between_publish_and_mark_publishes_again() {
    let f = fixture().await;
    let mut stream = f
        .broker
        .subscribe(Subscription::new("crash", "g"))
        .await
        .unwrap();
    let published = Arc::new(Notify::new());
    let hanging = Arc::new(PublishThenHang {
        inner: Arc::new(f.broker.clone()),
        published: published.clone(),
    });
    let first = f
        .outbox
        .relay(hanging)
        .config(fast().shutdown_timeout(Duration::from_millis(50)))
        .start();
    let message = Message::new("once").with_key("k");
    let mut tx = f.outbox.pool().begin().await.unwrap();
    f.outbox
        .enqueue(&mut tx, "crash", message.clone())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    tokio::time::timeout(WAIT, published.notified())
        .await
        .expect("the first relay publishes");
    let stats = first.shutdown().await;
    assert_eq!(stats.published, 0, "the first relay never marked the row");
    assert_eq!(f.outbox.backlog().await.unwrap().pending, 1);

    let second = f
        .outbox
        .relay(Arc::new(f.broker.clone()))
        .config(fast())
        .start();
    let got = receive(&mut stream, 2, WAIT).await;
    assert_eq!(got, [message.clone(), message]);
    let stats = second.shutdown().await;
    assert_eq!(stats.published, 1);
    assert_eq!(f.outbox.backlog().await.unwrap().pending, 0);
}

/// A message the broker refuses for good is marked failed with the reason,
/// does not hold up the rest, is listed for operators and can be retried.
#[tokio::test]
async fn refused_rows_are_failed_listed_and_retried() {
    let f = fixture().await;
    let strict = MemoryBroker::with_config(MemoryConfig::default().max_payload(8));
    let mut stream = strict
        .subscribe(Subscription::new("strict", "g"))
        .await
        .unwrap();
    let big = Message::new("far too large").with_key("a");
    let mut tx = f.outbox.pool().begin().await.unwrap();
    f.outbox
        .enqueue_batch(
            &mut tx,
            "strict",
            [
                Message::new("a1").with_key("a"),
                big.clone(),
                Message::new("a2").with_key("a"),
                Message::new("b1").with_key("b"),
            ],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let relay = f
        .outbox
        .relay(Arc::new(strict.clone()))
        .config(fast())
        .start();
    let got = receive(&mut stream, 3, WAIT).await;
    let texts: Vec<_> = got.iter().map(|m| m.payload().as_ref()).collect();
    assert_eq!(texts, [b"a1".as_ref(), b"a2", b"b1"]);
    let stats = relay.shutdown().await;
    assert_eq!((stats.published, stats.failed), (3, 1));

    let failed = f.outbox.failed(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].message.as_ref(), Some(&big));
    assert_eq!(failed[0].topic, "strict");
    assert!(
        failed[0].reason.contains("exceeds the limit"),
        "{}",
        failed[0].reason
    );
    assert_eq!(failed[0].attempts, 1);

    // The operator retries it through a broker that accepts it.
    assert!(f.outbox.retry_failed(failed[0].row).await.unwrap());
    assert!(
        !f.outbox.retry_failed(failed[0].row).await.unwrap(),
        "no longer failed"
    );
    let mut stream = f
        .broker
        .subscribe(Subscription::new("strict", "g"))
        .await
        .unwrap();
    let relay = f
        .outbox
        .relay(Arc::new(f.broker.clone()))
        .config(fast())
        .start();
    assert_eq!(receive(&mut stream, 1, WAIT).await, [big]);
    assert_eq!(relay.shutdown().await.published, 1);
    assert!(f.outbox.failed(10).await.unwrap().is_empty());
}

/// While the broker fails, rows wait and the relay backs off; afterwards
/// every row goes out, in order.
#[tokio::test]
async fn rows_wait_while_the_broker_is_down() {
    let f = fixture().await;
    let mut stream = f
        .broker
        .subscribe(Subscription::new("outage", "g"))
        .await
        .unwrap();
    let broker = Switchable::new(Arc::new(f.broker.clone()), true);
    let relay = f.outbox.relay(broker.clone()).config(fast()).start();
    let sent: Vec<Message> = (0..20)
        .map(|i| Message::new(format!("m{i}")).with_key("k"))
        .collect();
    let mut tx = f.outbox.pool().begin().await.unwrap();
    f.outbox
        .enqueue_batch(&mut tx, "outage", sent.clone())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    wait_until("three refused rounds", WAIT, || async {
        broker.refused.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert_eq!(f.outbox.backlog().await.unwrap().pending, 20);
    assert!(relay.stats().retries >= 3);
    broker.down.store(false, Ordering::SeqCst);

    assert_eq!(receive(&mut stream, 20, WAIT).await, sent);
    let stats = relay.shutdown().await;
    assert_eq!((stats.published, stats.failed), (20, 0));
}

#[tokio::test]
async fn sent_rows_are_cleaned_up_in_batches() {
    let f = fixture().await;
    f.broker
        .provision(&Subscription::new("clean", "g"))
        .await
        .unwrap();
    let mut tx = f.outbox.pool().begin().await.unwrap();
    f.outbox
        .enqueue_batch(
            &mut tx,
            "clean",
            (0..10).map(|i| Message::new(i.to_string())),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let config = fast()
        .sent_retention(Duration::ZERO)
        .cleanup_interval(Duration::from_millis(50))
        .cleanup_batch(3);
    let relay = f
        .outbox
        .relay(Arc::new(f.broker.clone()))
        .config(config)
        .start();
    let outbox = f.outbox.clone();
    wait_until("every sent row deleted", WAIT, || {
        let outbox = outbox.clone();
        async move { count_rows(&outbox).await == 0 }
    })
    .await;
    let stats = relay.shutdown().await;
    assert_eq!((stats.published, stats.cleaned), (10, 10));
}

#[tokio::test]
async fn delete_sent_removes_rows_at_once_and_backlog_reports_pending_rows() {
    let f = fixture().await;
    f.broker
        .provision(&Subscription::new("gauge", "g"))
        .await
        .unwrap();
    let mut tx = f.outbox.pool().begin().await.unwrap();
    f.outbox
        .enqueue_batch(
            &mut tx,
            "gauge",
            (0..7).map(|i| Message::new(i.to_string())),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let outbox = f.outbox.clone();
    wait_until("the oldest row ages", WAIT, || {
        let outbox = outbox.clone();
        async move { outbox.backlog().await.unwrap().oldest_pending_age > Duration::ZERO }
    })
    .await;
    assert_eq!(f.outbox.backlog().await.unwrap().pending, 7);

    let relay = f
        .outbox
        .relay(Arc::new(f.broker.clone()))
        .config(
            fast()
                .delete_sent(true)
                .backlog_interval(Duration::from_millis(10)),
        )
        .start();
    wait_until("every row deleted", WAIT, || {
        let outbox = outbox.clone();
        async move { count_rows(&outbox).await == 0 }
    })
    .await;
    assert_eq!(
        f.outbox.backlog().await.unwrap(),
        courier_outbox::Backlog::default()
    );
    let stats = relay.shutdown().await;
    assert_eq!(stats.published, 7);
}

#[tokio::test]
async fn a_table_of_its_own_name_works_and_migrate_is_idempotent() {
    let f = fixture().await;
    let outbox = SqliteOutbox::with_table(
        f.outbox.pool().clone(),
        TableName::new("Billing_Outbox").unwrap(),
    );
    outbox.migrate().await.unwrap();
    outbox.migrate().await.unwrap();
    let mut stream = f
        .broker
        .subscribe(Subscription::new("billing", "g"))
        .await
        .unwrap();
    let mut tx = outbox.pool().begin().await.unwrap();
    outbox
        .enqueue(&mut tx, "billing", Message::new("x"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count_rows(&outbox).await, 1);
    assert_eq!(count_rows(&f.outbox).await, 0);
    let relay = outbox
        .relay(Arc::new(f.broker.clone()))
        .config(fast())
        .start();
    assert_eq!(receive(&mut stream, 1, WAIT).await.len(), 1);
    assert_eq!(relay.shutdown().await.published, 1);
}
