//! Behaviour every backend must show, written once: each test file runs
//! these against its own outbox.

use courier_core::prelude::*;
use std::sync::Arc;
use std::time::Duration;

use courier_core::{Message, Publisher, Subscription, async_trait};
use courier_memory::{MemoryBroker, MemoryConfig};
use courier_outbox::{FailedRow, Relay, RelayConfig};
use tokio::sync::Notify;

use super::{PublishThenHang, full_message, receive, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// What the scenarios need from an outbox of either backend.
#[async_trait]
pub trait TestOutbox: Clone + Send + Sync + 'static {
    /// Enqueues `messages` in a transaction and commits it.
    async fn commit(&self, topic: &str, messages: Vec<Message>);
    /// Enqueues `messages` in a transaction and rolls it back.
    async fn roll_back(&self, topic: &str, messages: Vec<Message>);
    fn relay(&self, publisher: Arc<dyn Publisher>) -> Relay;
    async fn pending(&self) -> u64;
    /// Rows in the table, whatever their state.
    async fn rows(&self) -> i64;
    async fn failed(&self) -> Vec<FailedRow>;
    async fn retry_failed(&self, row: i64) -> bool;
}

pub async fn rolled_back_messages_are_never_published(
    outbox: impl TestOutbox,
    config: RelayConfig,
) {
    let broker = MemoryBroker::new();
    let mut stream = broker
        .subscribe(Subscription::new("orders", "g"))
        .await
        .unwrap();
    let relay = outbox
        .relay(Arc::new(broker.clone()))
        .config(config)
        .start();

    outbox
        .roll_back("orders", vec![Message::new("rolled back")])
        .await;
    outbox.commit("orders", vec![Message::new("first")]).await;
    outbox.commit("orders", vec![Message::new("second")]).await;

    let got = receive(&mut stream, 2, WAIT).await;
    let texts: Vec<_> = got.iter().map(|m| m.payload().as_ref()).collect();
    assert_eq!(texts, [b"first".as_ref(), b"second"]);
    assert_eq!(outbox.rows().await, 2, "the rolled-back row never existed");
    assert_eq!(relay.shutdown().await.published, 2);
}

pub async fn every_message_field_survives_the_trip(outbox: impl TestOutbox, config: RelayConfig) {
    let broker = MemoryBroker::new();
    let mut stream = broker
        .subscribe(Subscription::new("fields", "g"))
        .await
        .unwrap();
    let sent: Vec<Message> = (0..5).map(full_message).collect();
    outbox.commit("fields", sent.clone()).await;
    let relay = outbox
        .relay(Arc::new(broker.clone()))
        .config(config)
        .start();
    assert_eq!(receive(&mut stream, 5, WAIT).await, sent);
    relay.shutdown().await;
}

/// The relay published, then stopped before it could mark the row: the
/// next relay publishes it again, a duplicate with the same id, never a
/// loss.
pub async fn a_relay_stopped_between_publish_and_mark_publishes_again(
    outbox: impl TestOutbox,
    config: RelayConfig,
) {
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
        .config(config.clone().shutdown_timeout(Duration::from_millis(50)))
        .start();
    let message = Message::new("once").with_key("k");
    outbox.commit("crash", vec![message.clone()]).await;

    tokio::time::timeout(WAIT, published.notified())
        .await
        .expect("the first relay publishes");
    assert_eq!(
        first.shutdown().await.published,
        0,
        "the first relay never marked the row"
    );
    assert_eq!(outbox.pending().await, 1);

    let second = outbox
        .relay(Arc::new(broker.clone()))
        .config(config)
        .start();
    let got = receive(&mut stream, 2, WAIT).await;
    assert_eq!(
        got,
        [message.clone(), message],
        "published again with the same id"
    );
    assert_eq!(second.shutdown().await.published, 1);
    assert_eq!(outbox.pending().await, 0);
}

/// A message the broker refuses for good is marked failed with the reason,
/// does not hold up the rest (not even its own key), is listed for
/// operators and can be retried.
pub async fn refused_rows_are_failed_listed_and_retried(
    outbox: impl TestOutbox,
    config: RelayConfig,
) {
    let strict = MemoryBroker::with_config(MemoryConfig::default().max_payload(8));
    let mut stream = strict
        .subscribe(Subscription::new("strict", "g"))
        .await
        .unwrap();
    let big = Message::new("far too large").with_key("a");
    let batch = vec![
        Message::new("a1").with_key("a"),
        big.clone(),
        Message::new("a2").with_key("a"),
        Message::new("b1").with_key("b"),
    ];
    outbox.commit("strict", batch).await;

    let relay = outbox
        .relay(Arc::new(strict.clone()))
        .config(config.clone())
        .start();
    let got = receive(&mut stream, 3, WAIT).await;
    let texts: Vec<_> = got.iter().map(|m| m.payload().as_ref()).collect();
    assert_eq!(texts, [b"a1".as_ref(), b"a2", b"b1"]);
    let stats = relay.shutdown().await;
    assert_eq!((stats.published, stats.failed), (3, 1));

    let failed = outbox.failed().await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].message.as_ref(), Some(&big));
    assert_eq!(failed[0].topic, "strict");
    assert!(
        failed[0].reason.contains("larger than the limit"),
        "{}",
        failed[0].reason
    );
    assert_eq!(failed[0].attempts, 1);

    // The operator retries it through a broker that accepts it.
    assert!(outbox.retry_failed(failed[0].row).await);
    assert!(
        !outbox.retry_failed(failed[0].row).await,
        "no longer failed"
    );
    let broker = MemoryBroker::new();
    let mut stream = broker
        .subscribe(Subscription::new("strict", "g"))
        .await
        .unwrap();
    let relay = outbox
        .relay(Arc::new(broker.clone()))
        .config(config)
        .start();
    assert_eq!(receive(&mut stream, 1, WAIT).await, [big]);
    assert_eq!(relay.shutdown().await.published, 1);
    assert!(outbox.failed().await.is_empty());
}

pub async fn sent_rows_are_cleaned_up_in_batches(outbox: impl TestOutbox, config: RelayConfig) {
    let broker = MemoryBroker::new();
    broker
        .provision(&Subscription::new("clean", "g"))
        .await
        .unwrap();
    outbox
        .commit(
            "clean",
            (0..10).map(|i| Message::new(i.to_string())).collect(),
        )
        .await;
    let config = config
        .sent_retention(Duration::ZERO)
        .cleanup_interval(Duration::from_millis(50))
        .cleanup_batch(3);
    let relay = outbox
        .relay(Arc::new(broker.clone()))
        .config(config)
        .start();
    wait_until("every sent row deleted", WAIT, || {
        let outbox = outbox.clone();
        async move { outbox.rows().await == 0 }
    })
    .await;
    let stats = relay.shutdown().await;
    assert_eq!((stats.published, stats.cleaned), (10, 10));
}
