//! 10,000 messages from 100 concurrent publishers while the server is
//! restarted twice: every message whose publish returned `Ok` is received.
//! The broker keeps its topics, records and committed offsets across a
//! restart; the producer and the consumer reconnect by themselves.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use courier_core::{Message, Publisher, Subscriber, Subscription};
use courier_kafka::{KafkaBroker, KafkaConfig};
use futures::StreamExt;
use tokio::sync::Mutex;

const PUBLISHERS: usize = 100;
const PER_PUBLISHER: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_under_load_lose_no_confirmed_message() {
    let server = courier_testkit::fixtures::fresh_kafka()
        .await
        .expect("own kafka container");
    let config = KafkaConfig::from_url(server.url())
        .expect("url")
        .publish_timeout(Duration::from_secs(20));
    let broker = KafkaBroker::connect_with(config).await.expect("connect");
    let topic = courier_testkit::fixtures::unique_name("reconnect");
    let sub = Subscription::new(&topic, "readers").prefetch(256);
    Subscriber::provision(&broker, &sub)
        .await
        .expect("provision");

    // Receive concurrently, through the restarts.
    let received: Arc<Mutex<HashMap<usize, usize>>> = Arc::default();
    let consumer = {
        let (broker, received, sub) = (broker.clone(), received.clone(), sub.clone());
        tokio::spawn(async move {
            let mut stream = Subscriber::subscribe(&broker, sub)
                .await
                .expect("subscribe");
            while let Some(item) = stream.next().await {
                let Ok(delivery) = item else { continue };
                let seq: usize = std::str::from_utf8(delivery.message().payload())
                    .expect("utf8")
                    .parse()
                    .expect("sequence");
                // An ack lost in an outage means a redelivery, counted below.
                if delivery.ack().await.is_ok() {
                    *received.lock().await.entry(seq).or_default() += 1;
                }
            }
        })
    };

    let confirmed: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (broker, topic, confirmed, failed) = (
                broker.clone(),
                topic.clone(),
                confirmed.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    let seq = p * PER_PUBLISHER + i;
                    match Publisher::publish(&broker, &topic, Message::new(seq.to_string())).await {
                        Ok(()) => {
                            confirmed.lock().await.insert(seq);
                        }
                        Err(e) => {
                            if failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000 == 0
                            {
                                eprintln!("publish error: {e} ({e:?})");
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();

    for round in 1..=2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let before = confirmed.lock().await.len();
        server.restart().await.expect("restart");
        eprintln!("restart {round}: {before} publishes confirmed before it");
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    let confirmed = confirmed.lock().await.clone();

    // Wait until every confirmed message arrived, or nothing new arrives for a while.
    let mut last = 0;
    let mut idle = 0;
    while idle < 30 {
        let got: HashSet<usize> = received.lock().await.keys().copied().collect();
        if confirmed.is_subset(&got) {
            break;
        }
        if got.len() == last {
            idle += 1;
        } else {
            (last, idle) = (got.len(), 0);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let received = received.lock().await.clone();
    let lost = confirmed
        .iter()
        .filter(|s| !received.contains_key(s))
        .count();
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    let unconfirmed_received = received.keys().filter(|s| !confirmed.contains(s)).count();
    eprintln!(
        "kafka reconnect: {} published Ok, {} publish errors, {} received, lost {lost}, duplicates {duplicates}, received without Ok {unconfirmed_received}",
        confirmed.len(),
        failed.load(std::sync::atomic::Ordering::Relaxed),
        received.len()
    );
    assert_eq!(
        lost, 0,
        "every message whose publish returned Ok is received"
    );
    assert_eq!(
        confirmed.len() + failed.load(std::sync::atomic::Ordering::Relaxed),
        PUBLISHERS * PER_PUBLISHER
    );
    broker.close().await.expect("close");
    consumer.await.expect("consumer");
}
