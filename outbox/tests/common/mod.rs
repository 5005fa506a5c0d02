//! Helpers shared by the outbox's tests: brokers that fail on purpose
//! around a real one, and progress-based waits.

#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "postgres")]
pub mod postgres;
pub mod scenarios;

use courier_core::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use courier_core::{DeliveryStream, Error, Message, Publisher, Result, async_trait};
use futures::StreamExt;
use tokio::sync::Notify;

/// A publisher that hands each batch to the real one and then never
/// returns: the relay has published but cannot mark (a crash between
/// the two).
#[derive(Debug)]
pub struct PublishThenHang {
    pub inner: Arc<dyn Publisher>,
    pub published: Arc<Notify>,
}

#[async_trait]
impl Publisher for PublishThenHang {
    async fn publish(&self, topic: &str, message: Message) -> Result<()> {
        self.publish_batch(topic, vec![message]).await
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        self.inner.publish_batch(topic, messages).await?;
        self.published.notify_one();
        std::future::pending().await
    }
}

#[async_trait]
impl Close for PublishThenHang {
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// A publisher in front of a real one that fails with a retryable error
/// while `down` is set, counting the failures.
#[derive(Debug)]
pub struct Switchable {
    pub inner: Arc<dyn Publisher>,
    pub down: AtomicBool,
    pub refused: AtomicUsize,
}

impl Switchable {
    pub fn new(inner: Arc<dyn Publisher>, down: bool) -> Arc<Self> {
        Arc::new(Switchable {
            inner,
            down: AtomicBool::new(down),
            refused: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl Publisher for Switchable {
    async fn publish(&self, topic: &str, message: Message) -> Result<()> {
        self.publish_batch(topic, vec![message]).await
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Timeout {
                operation: "publish",
                after: Duration::from_millis(1),
            });
        }
        self.inner.publish_batch(topic, messages).await
    }
}

#[async_trait]
impl Close for Switchable {
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// Reads and acks deliveries until `expected` arrived, or none arrived for
/// `idle` (then returns what came).
pub async fn receive(stream: &mut DeliveryStream, expected: usize, idle: Duration) -> Vec<Message> {
    let mut got = Vec::new();
    while got.len() < expected {
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(Ok(delivery))) => {
                got.push(delivery.message().clone());
                delivery.ack().await.expect("ack");
            }
            Ok(Some(Err(e))) => panic!("delivery stream failed: {e}"),
            Ok(None) => panic!("delivery stream ended"),
            Err(_) => break,
        }
    }
    got
}

/// Polls `check` every 20 ms until it returns true; panics with `what`
/// after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A message with every field set, for round-trip checks.
pub fn full_message(i: usize) -> Message {
    Message::new(format!("payload {i}"))
        .with_key(format!("key-{}", i % 3))
        .with_content_type("application/x-test")
        .with_header("tenant", "acme")
        .unwrap()
        .with_header("unicode", "✓ ünïcode")
        .unwrap()
        .with_header("empty", "")
        .unwrap()
        .with_correlation_id(format!("corr-{i}"))
        .unwrap()
        .with_causation_id(format!("cause-{i}"))
        .unwrap()
}
