//! A dead-letter copy the broker keeps refusing: the consumer's status
//! counts the refusals, and the shutdown deadline gives the held message
//! back instead of waiting for ever.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use courier_core::runtime::{self, Consumer, HandlerError};
use courier_core::{Message, Subscription};
use courier_memory::{MemoryBroker, MemoryConfig, WhenFull};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_copies_are_counted_and_the_shutdown_gives_the_message_back() {
    let config = MemoryConfig::default()
        .max_queue_len(1)
        .when_full(WhenFull::Reject);
    let broker = MemoryBroker::with_config(config).into_broker();
    let sub = Subscription::new("orders", "billing");
    let calls = Arc::new(AtomicU32::new(0));
    let handler = {
        let calls = calls.clone();
        runtime::raw(move |_message: Message| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(HandlerError::permanent(std::io::Error::other("poison")))
            }
        })
    };
    let running = Consumer::builder(&broker, sub.clone(), handler)
        .shutdown_deadline(Duration::from_millis(200))
        .start()
        .await
        .expect("start");
    // The runtime provisioned `billing` on `orders.dlq`; one message fills it.
    broker
        .publish("orders.dlq", Message::new("filler"))
        .await
        .expect("fill the dead-letter group");
    let poison = Message::new("poison");
    let poison_id = poison.id().clone();
    broker.publish("orders", poison).await.expect("publish");

    tokio::time::timeout(Duration::from_secs(10), async {
        while running.status().dead_letter_failures < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("two refused copies");
    let status = running.status();
    assert_eq!(status.in_flight, 1, "the message is held");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let stats = tokio::time::timeout(Duration::from_secs(5), running.shutdown())
        .await
        .expect("the shutdown deadline bounds the retries")
        .expect("shutdown");
    assert!(stats.dead_letter_failures >= 2);
    assert_eq!(
        (stats.dead_lettered, stats.requeued, stats.in_flight),
        (0, 1, 0)
    );

    let mut stream = broker.subscribe(sub).await.expect("subscribe");
    let back = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the message is back")
        .expect("open")
        .expect("delivery");
    assert_eq!(back.message().id(), &poison_id);
    back.ack().await.expect("ack");
}
