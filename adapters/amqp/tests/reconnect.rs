//! Watermill's TestReconnect, made stricter: 10,000 messages from 100
//! concurrent publishers while a consumer reads, the broker restarted twice
//! mid-stream. Every message whose publish returned `Ok` must be received;
//! lost messages are counted (and must be 0), duplicates are counted.

use courier_core::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use courier_amqp::{AmqpBroker, AmqpConfig, Reconnect};
use courier_core::{Message, Subscription};
use courier_testkit::fixtures::fresh_rabbitmq;
use futures::StreamExt;
use tokio::sync::Mutex;

const PUBLISHERS: usize = 100;
const PER_PUBLISHER: usize = 100;
const TOTAL: usize = PUBLISHERS * PER_PUBLISHER;
/// Restart when this many publishes have been confirmed.
const RESTART_AT: [usize; 2] = [2_000, 6_000];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_survives_two_restarts() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_test_writer())
        .with(
            tracing_subscriber::filter::Targets::new()
                .with_target("courier_amqp", tracing::Level::INFO),
        )
        .try_init();
    let fixture = Arc::new(fresh_rabbitmq().await.expect("RabbitMQ fixture"));
    let config = AmqpConfig::default()
        .reconnect(Reconnect::default().give_up_after(Duration::from_secs(240)));
    let publisher = AmqpBroker::connect_with(fixture.url(), config.clone())
        .await
        .expect("connect publisher");
    let consumer = AmqpBroker::connect_with(fixture.url(), config)
        .await
        .expect("connect consumer");
    let sub = Subscription::new("reconnect", "counting").prefetch(200);
    consumer.provision(&sub).await.expect("provision");

    // The consumer reads throughout, restarts included.
    let received: Arc<Mutex<HashMap<usize, u32>>> = Arc::default();
    let stale_acks = Arc::new(AtomicUsize::new(0));
    let hung_acks = Arc::new(AtomicUsize::new(0));
    let mut stream = consumer.subscribe(sub.clone()).await.expect("subscribe");
    let reading = {
        let (received, stale_acks, hung_acks) =
            (received.clone(), stale_acks.clone(), hung_acks.clone());
        tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let delivery = item.expect("the stream survives restarts");
                let seq: usize = std::str::from_utf8(delivery.message().payload())
                    .unwrap()
                    .parse()
                    .unwrap();
                *received.lock().await.entry(seq).or_default() += 1;
                // An ack never hangs, not even when its connection dies under it.
                let acking = tokio::time::timeout(Duration::from_secs(10), delivery.ack()).await;
                if acking.is_err() {
                    hung_acks.fetch_add(1, Ordering::Relaxed);
                }
                if !matches!(acking, Ok(Ok(()))) {
                    // Its channel died with the connection: it comes again.
                    stale_acks.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let confirmed: Arc<Mutex<Vec<usize>>> = Arc::default();
    let progress = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let publishing: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (publisher, topic) = (publisher.clone(), sub.topic().to_owned());
            let (confirmed, progress, failed) =
                (confirmed.clone(), progress.clone(), failed.clone());
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    let seq = p * PER_PUBLISHER + i;
                    match publisher
                        .publish(&topic, Message::new(seq.to_string()))
                        .await
                    {
                        Ok(()) => confirmed.lock().await.push(seq),
                        Err(e) => {
                            eprintln!("publish {seq} failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    for (n, at) in RESTART_AT.into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(120);
        while progress.load(Ordering::Relaxed) < at {
            assert!(
                Instant::now() < deadline,
                "publishing stalled at {} of {at} before restart {}",
                progress.load(Ordering::Relaxed),
                n + 1
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before = progress.load(Ordering::Relaxed);
        let started = Instant::now();
        fixture.restart().await.expect("restart");
        let after = progress.load(Ordering::Relaxed);
        eprintln!(
            "restart {}: at {before} of {TOTAL} publishes, broker back after {:?} ({after} done by then)",
            n + 1,
            started.elapsed()
        );
        assert!(
            before < TOTAL,
            "restart {} came after the last publish",
            n + 1
        );
    }
    for task in publishing {
        task.await.expect("publisher task");
    }
    let confirmed = confirmed.lock().await.clone();

    // Wait until every confirmed message arrived, or nothing came for a while.
    let mut last_count = 0;
    let mut quiet_since = Instant::now();
    loop {
        let (unique, missing) = {
            let received = received.lock().await;
            let missing = confirmed
                .iter()
                .filter(|s| !received.contains_key(s))
                .count();
            (received.len(), missing)
        };
        if missing == 0 {
            break;
        }
        if unique != last_count {
            last_count = unique;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A short while more, to count late duplicates too.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let received_now = received.lock().await.clone();
    let lost = confirmed
        .iter()
        .filter(|s| !received_now.contains_key(s))
        .count();
    let (unique, deliveries) = counts(&received).await;
    let duplicates = deliveries - unique;
    eprintln!(
        "reconnect: {} published, {} confirmed, {} failed, {unique} received, \
         {duplicates} duplicates, {} stale acks, lost: {lost}",
        TOTAL,
        confirmed.len(),
        failed.load(Ordering::Relaxed),
        stale_acks.load(Ordering::Relaxed),
    );
    assert_eq!(lost, 0, "confirmed messages were lost");
    assert_eq!(hung_acks.load(Ordering::Relaxed), 0, "acks hung");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "publishes failed although the broker came back"
    );
    assert_eq!(confirmed.len(), TOTAL);
    assert!(unique <= TOTAL);

    consumer.close().await.unwrap();
    publisher.close().await.unwrap();
    reading.await.expect("reader task");
}

/// Distinct messages received, and deliveries in all.
async fn counts(received: &Mutex<HashMap<usize, u32>>) -> (usize, usize) {
    let received = received.lock().await;
    (received.len(), received.values().map(|&n| n as usize).sum())
}
