//! The PostgreSQL outbox relayed to real brokers: end to end on RabbitMQ,
//! NATS and Kafka, and a NATS server stopped and started under the relay.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::postgres::outbox;
use common::{full_message, receive, wait_until};
use courier_amqp::AmqpBroker;
use courier_core::{Broker, Message, Subscription};
use courier_kafka::KafkaBroker;
use courier_nats::NatsBroker;
use courier_outbox::RelayConfig;
use courier_testkit::fixtures::{self, unique_name};

const WAIT: Duration = Duration::from_secs(120);

fn fast() -> RelayConfig {
    RelayConfig::default()
        .poll_interval(Duration::from_millis(100))
        .min_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(500))
        .publish_timeout(Duration::from_secs(5))
}

/// Enqueue in a transaction (and one rolled back), relay, consume with a
/// courier subscriber: the messages arrive with every field identical.
async fn end_to_end(broker: Broker) {
    let outbox = outbox().await;
    let topic = unique_name("e2e");
    let subscription = Subscription::new(&topic, "readers");
    broker.provision(&subscription).await.expect("provision");
    let mut stream = broker.subscribe(subscription).await.expect("subscribe");
    let relay = outbox.relay(broker.publisher()).config(fast()).start();

    let mut tx = outbox.pool().begin().await.unwrap();
    outbox
        .enqueue(&mut tx, &topic, Message::new("rolled back"))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let sent: Vec<Message> = (0..12).map(full_message).collect();
    let mut tx = outbox.pool().begin().await.unwrap();
    outbox
        .enqueue_batch(&mut tx, &topic, sent.clone())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let got = receive(&mut stream, sent.len(), WAIT).await;
    assert_eq!(got, sent, "every field identical, in order, nothing else");
    let stats = relay.shutdown().await;
    assert_eq!(stats.published, sent.len() as u64);
    eprintln!(
        "{}: {} messages end to end, fields identical",
        broker.name(),
        got.len()
    );
    drop(stream);
    broker.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_rabbitmq() {
    let server = fixtures::rabbitmq().await.expect("rabbitmq fixture");
    let broker = AmqpBroker::connect(server.url()).await.expect("connect");
    end_to_end(broker.into_broker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_nats() {
    let server = fixtures::nats().await.expect("nats fixture");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    end_to_end(broker.into_broker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_kafka() {
    let server = fixtures::kafka().await.expect("kafka fixture");
    let broker = KafkaBroker::connect(server.url()).await.expect("connect");
    end_to_end(broker.into_broker()).await;
}

/// The NATS server stops while the relay runs: rows committed meanwhile
/// wait, the relay backs off, and once the server is back every row goes
/// out, each key's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_wait_while_the_broker_is_down_then_all_go_out() {
    const KEYS: usize = 5;
    let server = fixtures::fresh_nats().await.expect("own nats container");
    let broker = NatsBroker::connect(server.url())
        .await
        .expect("connect")
        .into_broker();
    let outbox = outbox().await;
    let topic = unique_name("outage");
    let subscription = Subscription::new(&topic, "readers").prefetch(200);
    broker.provision(&subscription).await.expect("provision");
    let relay = outbox.relay(broker.publisher()).config(fast()).start();

    let batch = |from: usize| -> Vec<Message> {
        (from..from + 50)
            .map(|i| Message::new(format!("{}:{i}", i % KEYS)).with_key(format!("k{}", i % KEYS)))
            .collect()
    };
    let commit = |messages: Vec<Message>| {
        let outbox = outbox.clone();
        let topic = topic.clone();
        async move {
            let mut tx = outbox.pool().begin().await.unwrap();
            outbox
                .enqueue_batch(&mut tx, &topic, messages)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    };
    let pending = || {
        let outbox = outbox.clone();
        async move { outbox.backlog().await.unwrap().pending }
    };

    commit(batch(0)).await;
    wait_until("the first 50 published", WAIT, || async {
        pending().await == 0
    })
    .await;
    server.stop().await.expect("stop nats");
    commit(batch(50)).await;
    let retries_before = relay.stats().retries;
    wait_until(
        "the relay retries while the broker is down",
        WAIT,
        || async { relay.stats().retries >= retries_before + 2 },
    )
    .await;
    assert_eq!(pending().await, 50, "rows wait while the broker is down");
    eprintln!(
        "broker down: 50 rows pending, {} failed rounds so far",
        relay.stats().retries
    );
    server.start().await.expect("start nats");
    wait_until("every row published after the restart", WAIT, || async {
        pending().await == 0
    })
    .await;
    let stats = relay.shutdown().await;

    let mut stream = broker.subscribe(subscription).await.expect("subscribe");
    let got = receive(&mut stream, 100, Duration::from_secs(15)).await;
    let mut seen = HashSet::new();
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut out_of_order = 0;
    for message in &got {
        if !seen.insert(message.id().clone()) {
            continue;
        }
        let text = std::str::from_utf8(message.payload()).unwrap();
        let i: usize = text.split_once(':').unwrap().1.parse().unwrap();
        let key = message.key().unwrap().to_owned();
        if last.get(&key).is_some_and(|&prev| prev >= i) {
            out_of_order += 1;
        }
        last.insert(key, i);
    }
    eprintln!(
        "broker down then up: {} received, {} distinct, lost {}, duplicates {}, \
         published {}, failed rounds {}, out of order {out_of_order}",
        got.len(),
        seen.len(),
        100 - seen.len(),
        got.len() - seen.len(),
        stats.published,
        stats.retries
    );
    assert_eq!(seen.len(), 100, "no row lost");
    assert_eq!(stats.failed, 0, "a broker outage never fails a row");
    assert_eq!(out_of_order, 0);
    drop(stream);
    broker.close().await.expect("close");
}
