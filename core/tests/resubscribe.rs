//! The consumer subscribes again when its subscription fails for good (an
//! adapter that gave up reconnecting), instead of ending.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_core::runtime::{self, Consumer, RetryPolicy};
use courier_core::{
    BrokerErrorKind, Close, DeliveryStream, Error, Message, Publisher, Result, Subscriber,
    Subscription, async_trait,
};
use courier_memory::MemoryBroker;
use futures::StreamExt;

/// A subscriber over the memory broker whose first stream fails after
/// `fail_after` deliveries (as an adapter's stream does when reconnecting
/// gave up), and whose next `refusals` subscribes fail (the broker is
/// still away).
#[derive(Debug)]
struct GivesUpOnce {
    inner: MemoryBroker,
    fail_after: usize,
    refusals: u32,
    subscribes: AtomicU32,
}

fn outage() -> Error {
    Error::broker(
        "memory",
        "subscribe",
        BrokerErrorKind::Unavailable,
        "reconnecting gave up",
    )
}

#[async_trait]
impl Close for GivesUpOnce {
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

#[async_trait]
impl Subscriber for GivesUpOnce {
    async fn provision(&self, subscription: &Subscription) -> Result<()> {
        self.inner.provision(subscription).await
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        let call = self.subscribes.fetch_add(1, Ordering::SeqCst);
        if call == 0 {
            let stream = self.inner.subscribe(subscription).await?;
            // The deliveries before the failure, then the error; the
            // stream is dropped with anything it still held.
            let failing = stream
                .take(self.fail_after)
                .chain(futures::stream::once(async { Err(outage()) }));
            return Ok(failing.boxed());
        }
        if call <= self.refusals {
            return Err(outage());
        }
        self.inner.subscribe(subscription).await
    }
}

/// A consumer over `subscriber` recording the ids it handled.
fn consumer(
    subscriber: &Arc<GivesUpOnce>,
    sub: &Subscription,
    resubscribe: bool,
) -> (Consumer, Arc<Mutex<HashSet<String>>>) {
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        runtime::raw(move |message: Message| {
            seen.lock().unwrap().insert(message.id().to_string());
            async { Ok(()) }
        })
    };
    let consumer = Consumer::builder(subscriber.clone(), sub.clone(), handler)
        .retry(RetryPolicy::none())
        .resubscribe(resubscribe)
        .build();
    (consumer, seen)
}

async fn published(broker: &MemoryBroker, sub: &Subscription, count: usize) -> HashSet<String> {
    broker.provision(sub).await.unwrap();
    let messages: Vec<Message> = (0..count).map(|n| Message::new(n.to_string())).collect();
    let ids = messages.iter().map(|m| m.id().to_string()).collect();
    broker.publish_batch(sub.topic(), messages).await.unwrap();
    ids
}

#[tokio::test]
async fn a_failed_subscription_is_subscribed_again_and_nothing_is_lost() {
    let inner = MemoryBroker::new();
    let sub = Subscription::new("orders", "billing");
    let expected = published(&inner, &sub, 100).await;
    let subscriber = Arc::new(GivesUpOnce {
        inner,
        fail_after: 30,
        refusals: 2,
        subscribes: AtomicU32::new(0),
    });
    let (consumer, seen) = consumer(&subscriber, &sub, true);
    let running = consumer.start().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < expected.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} handled; the consumer ended: {}",
            seen.lock().unwrap().len(),
            expected.len(),
            running.is_finished()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(*seen.lock().unwrap(), expected);
    assert!(!running.is_finished());
    // The failed stream, two refused attempts, the one that worked.
    assert_eq!(subscriber.subscribes.load(Ordering::SeqCst), 4);
    assert_eq!(running.resubscribes(), 1);
    let stats = running.shutdown().await.expect("a clean shutdown");
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test]
async fn without_resubscribing_the_consumer_ends_with_the_error() {
    let inner = MemoryBroker::new();
    let sub = Subscription::new("orders", "billing");
    published(&inner, &sub, 100).await;
    let subscriber = Arc::new(GivesUpOnce {
        inner,
        fail_after: 30,
        refusals: 0,
        subscribes: AtomicU32::new(0),
    });
    let (consumer, _seen) = consumer(&subscriber, &sub, false);
    let running = consumer.start().await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), running.wait())
        .await
        .expect("the consumer ends");
    assert_eq!(
        outcome.unwrap_err().broker_kind(),
        Some(BrokerErrorKind::Unavailable)
    );
    assert_eq!(subscriber.subscribes.load(Ordering::SeqCst), 1);
}
