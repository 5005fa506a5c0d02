//! The SQLite outbox in a temporary database file, relayed to the
//! in-process broker.

mod common;

use courier_core::prelude::*;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::scenarios::{self, TestOutbox};
use common::{Switchable, receive, wait_until};
use courier_core::{Message, Publisher, Subscription, async_trait};
use courier_memory::MemoryBroker;
use courier_outbox::sqlite::SqliteOutbox;
use courier_outbox::{FailedRow, Relay, RelayConfig, TableName};

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

/// An outbox in a database file of its own, kept while a clone lives.
#[derive(Clone)]
struct Sqlite {
    outbox: SqliteOutbox,
    _dir: Arc<tempfile::TempDir>,
}

async fn sqlite() -> Sqlite {
    let Fixture { _dir, outbox, .. } = fixture().await;
    Sqlite {
        outbox,
        _dir: Arc::new(_dir),
    }
}

#[async_trait]
impl TestOutbox for Sqlite {
    async fn commit(&self, topic: &str, messages: Vec<Message>) {
        let mut tx = self.outbox.pool().begin().await.unwrap();
        self.outbox
            .enqueue_batch(&mut tx, topic, messages)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    async fn roll_back(&self, topic: &str, messages: Vec<Message>) {
        let mut tx = self.outbox.pool().begin().await.unwrap();
        self.outbox
            .enqueue_batch(&mut tx, topic, messages)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }

    fn relay(&self, publisher: Arc<dyn Publisher>) -> Relay {
        self.outbox.relay(publisher)
    }

    async fn pending(&self) -> u64 {
        self.outbox.backlog().await.unwrap().pending
    }

    async fn rows(&self) -> i64 {
        count_rows(&self.outbox).await
    }

    async fn failed(&self) -> Vec<FailedRow> {
        self.outbox.failed(10).await.unwrap()
    }

    async fn retry_failed(&self, row: i64) -> bool {
        self.outbox.retry_failed(row).await.unwrap()
    }
}

#[tokio::test]
async fn rolled_back_messages_are_never_published() {
    scenarios::rolled_back_messages_are_never_published(sqlite().await, fast()).await;
}

#[tokio::test]
async fn every_message_field_survives_the_trip() {
    scenarios::every_message_field_survives_the_trip(sqlite().await, fast()).await;
}

#[tokio::test]
async fn a_relay_stopped_between_publish_and_mark_publishes_again() {
    scenarios::a_relay_stopped_between_publish_and_mark_publishes_again(sqlite().await, fast())
        .await;
}

#[tokio::test]
async fn refused_rows_are_failed_listed_and_retried() {
    scenarios::refused_rows_are_failed_listed_and_retried(sqlite().await, fast()).await;
}

#[tokio::test]
async fn sent_rows_are_cleaned_up_in_batches() {
    scenarios::sent_rows_are_cleaned_up_in_batches(sqlite().await, fast()).await;
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

    // The relay counts a failed round after the publisher refused it: wait
    // for both, or the count may lag one refusal behind.
    wait_until("three refused and counted rounds", WAIT, || async {
        broker.refused.load(Ordering::SeqCst) >= 3 && relay.stats().retries >= 3
    })
    .await;
    assert_eq!(f.outbox.backlog().await.unwrap().pending, 20);
    broker.down.store(false, Ordering::SeqCst);

    assert_eq!(receive(&mut stream, 20, WAIT).await, sent);
    let stats = relay.shutdown().await;
    assert_eq!((stats.published, stats.failed), (20, 0));
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
