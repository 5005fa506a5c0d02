//! Duplicates in, one effect out: 8 consumers of one group on a real broker
//! (the in-process one, and RabbitMQ in a container), 1,000 distinct
//! messages each published 3 times with the same id, so that copies of one
//! message reach different consumers at the same moment.
//!
//! - through the [`IdempotencyLayer`], for every store: each handler effect
//!   (counted per message id) happens exactly once;
//! - with claims inside the handler's own transaction (PostgreSQL, SQLite):
//!   each effect row is written exactly once, counted in the database.
//!
//! `cargo test -p courier-idempotency --all-features --test race`

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_core::runtime::{self, Consumer, ConsumerMetrics, Handler, HandlerError, RetryPolicy};
use courier_core::{Broker, Message, Subscription};
use courier_idempotency::IdempotencyLayer;
use courier_testkit::fixtures::unique_name;

const CONSUMERS: usize = 8;
const MESSAGES: usize = 1_000;
const COPIES: usize = 3;
const DEADLINE: Duration = Duration::from_secs(300);

/// Connections to one broker: one per consumer, and one to publish.
async fn connect(broker: &str) -> Vec<Broker> {
    match broker {
        "memory" => {
            let shared = courier_memory::MemoryBroker::new().into_broker();
            vec![shared; CONSUMERS + 1]
        }
        "rabbitmq" => {
            let server = courier_testkit::fixtures::rabbitmq()
                .await
                .expect("rabbitmq fixture");
            let mut connections = Vec::new();
            for _ in 0..=CONSUMERS {
                let broker = courier_amqp::AmqpBroker::connect(server.url())
                    .await
                    .expect("connect rabbitmq");
                connections.push(broker.into_broker());
            }
            connections
        }
        other => panic!("unknown broker {other}"),
    }
}

/// Retries that outwait another consumer's claim: many short attempts.
/// Five attempts, as by default: a message another worker holds is
/// deferred without using them up.
fn patient() -> RetryPolicy {
    RetryPolicy::exponential()
        .max_attempts(5)
        .min_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(100))
}

/// Runs 8 consumers of `handler` (wrapped by `layer`, if any) until every
/// copy of every message was acked; returns the consumers' metrics.
async fn run_race<H: Handler + Clone>(
    broker: &str,
    handler: H,
    layer: Option<IdempotencyLayer>,
) -> Vec<ConsumerMetrics> {
    let connections = connect(broker).await;
    let topic = unique_name("race");
    let subscription = Subscription::new(&topic, "workers");
    let mut consumers = Vec::new();
    let mut metrics = Vec::new();
    let stop = runtime::ShutdownHandle::new();
    for connection in &connections[..CONSUMERS] {
        let mut builder = Consumer::builder(connection, subscription.clone(), handler.clone())
            .concurrency(8)
            .retry(patient())
            .shutdown_on(stop.clone());
        if let Some(layer) = &layer {
            builder = builder.layer(layer.clone());
        }
        let consumer = builder.build();
        metrics.push(consumer.metrics());
        connection
            .provision(consumer.subscription())
            .await
            .expect("provision");
        consumers.push(tokio::spawn(consumer.run()));
    }
    let publisher = &connections[CONSUMERS];
    let messages: Vec<Message> = (0..MESSAGES)
        .map(|n| Message::new(format!("message {n}")))
        .collect();
    // The copies of a message go out together, so that different consumers
    // get them at the same moment.
    for chunk in messages.chunks(100) {
        let batch = chunk
            .iter()
            .flat_map(|m| std::iter::repeat_n(m.clone(), COPIES))
            .collect();
        publisher
            .publish_batch(&topic, batch)
            .await
            .expect("publish");
    }
    let acked = || metrics.iter().map(|m| m.snapshot().handled).sum::<u64>();
    common::eventually(&format!("{broker}: every copy acked"), DEADLINE, || async {
        (acked() >= (MESSAGES * COPIES) as u64).then_some(())
    })
    .await;
    stop.shutdown();
    for consumer in consumers {
        consumer
            .await
            .expect("consumer task")
            .expect("consumer run");
    }
    for connection in connections.iter().skip(CONSUMERS) {
        connection.close().await.expect("close");
    }
    if broker != "memory" {
        for connection in &connections[..CONSUMERS] {
            connection.close().await.expect("close");
        }
    }
    let dead = metrics
        .iter()
        .map(|m| m.snapshot().dead_lettered)
        .sum::<u64>();
    assert_eq!(acked(), (MESSAGES * COPIES) as u64, "{broker}: acks");
    assert_eq!(dead, 0, "{broker}: nothing dead-lettered");
    metrics
}

/// The layer over `store` on `broker`: every message's effect happens once.
async fn through_the_layer(broker: &str, store: &str) {
    let under_test = common::store(store).await;
    let effects: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let handler = {
        let effects = effects.clone();
        Arc::new(runtime::raw(move |message: Message| {
            let effects = effects.clone();
            async move {
                // Widen the window in which a copy can arrive elsewhere.
                tokio::task::yield_now().await;
                *effects
                    .lock()
                    .expect("effects")
                    .entry(message.id().to_string())
                    .or_default() += 1;
                Ok(())
            }
        }))
    };
    let layer = IdempotencyLayer::new(under_test.store.clone())
        .lease(Duration::from_secs(30))
        .in_progress_retry(Duration::from_millis(20));
    run_race(broker, handler, Some(layer.clone())).await;
    let effects = effects.lock().expect("effects");
    let twice: Vec<_> = effects.iter().filter(|(_, n)| **n != 1).collect();
    let stats = layer.stats();
    println!(
        "{broker} + {store}: {} messages, layer {stats:?}",
        effects.len()
    );
    assert_eq!(
        effects.len(),
        MESSAGES,
        "{broker} + {store}: messages handled"
    );
    assert!(
        twice.is_empty(),
        "{broker} + {store}: effects not once: {twice:?}"
    );
    assert_eq!(stats.claimed, MESSAGES as u64);
    assert_eq!(stats.completed, MESSAGES as u64);
    assert_eq!(stats.skipped, ((COPIES - 1) * MESSAGES) as u64);
    assert_eq!((stats.store_errors, stats.lease_lost), (0, 0));
}

macro_rules! layer_races {
    ($($name:ident: $broker:literal, $store:literal, $feature:literal;)*) => {
        $(
            #[cfg(feature = $feature)]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                through_the_layer($broker, $store).await;
            }
        )*
    };
}

layer_races! {
    memory_broker_memory_store: "memory", "memory", "memory";
    memory_broker_sqlite_store: "memory", "sqlite", "sqlite";
    memory_broker_postgres_store: "memory", "postgres", "postgres";
    memory_broker_redis_store: "memory", "redis", "redis";
    rabbitmq_memory_store: "rabbitmq", "memory", "memory";
    rabbitmq_sqlite_store: "rabbitmq", "sqlite", "sqlite";
    rabbitmq_postgres_store: "rabbitmq", "postgres", "postgres";
    rabbitmq_redis_store: "rabbitmq", "redis", "redis";
}

/// A handler whose effect is a row in the store's own database, claimed in
/// the same transaction: the database counts each effect once.
macro_rules! transaction_race {
    ($name:ident, $feature:literal, $store:ty, $connect:expr, $broker:literal) => {
        #[cfg(feature = $feature)]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (store, _keep) = $connect.await;
            let store: Arc<$store> = Arc::new(store);
            let table = unique_name("effects");
            sqlx::query(&format!("CREATE TABLE {table} (item TEXT NOT NULL)"))
                .execute(store.pool())
                .await
                .expect("effects table");
            let handler = Arc::new(runtime::raw({
                let (store, table) = (store.clone(), table.clone());
                move |message: Message| {
                    let (store, table) = (store.clone(), table.clone());
                    async move {
                        let key = courier_idempotency::IdempotencyKey::new(
                            "workers",
                            message.id().to_string(),
                        );
                        let mut tx = store.pool().begin().await?;
                        let claim = store.claim_in(&mut tx, &key).await?;
                        if claim.is_in_progress() {
                            return Err(HandlerError::transient("held by a lease"));
                        }
                        if claim.is_claimed() {
                            sqlx::query(&format!(
                                "INSERT INTO {table} VALUES ('{}')",
                                message.id()
                            ))
                            .execute(&mut *tx)
                            .await?;
                        }
                        tx.commit().await?;
                        Ok(())
                    }
                }
            }));
            run_race($broker, handler, None).await;
            let (rows, distinct): (i64, i64) = sqlx::query_as(&format!(
                "SELECT count(*), count(DISTINCT item) FROM {table}"
            ))
            .fetch_one(store.pool())
            .await
            .expect("count effects");
            println!(
                "{}: {rows} effect rows, {distinct} distinct",
                stringify!($name)
            );
            assert_eq!((rows, distinct), (MESSAGES as i64, MESSAGES as i64));
        }
    };
}

#[cfg(feature = "sqlite")]
async fn sqlite() -> (courier_idempotency::SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("race.db").display());
    let config =
        courier_idempotency::StoreConfig::default().operation_timeout(Duration::from_secs(30));
    let store = courier_idempotency::SqliteStore::connect(&url, config)
        .await
        .expect("sqlite store");
    (store, dir)
}

#[cfg(feature = "postgres")]
async fn postgres() -> (
    courier_idempotency::PostgresStore,
    Arc<courier_testkit::fixtures::BrokerFixture>,
) {
    let server = courier_testkit::fixtures::postgres()
        .await
        .expect("postgres fixture");
    let config = courier_idempotency::StoreConfig::default().max_connections(16);
    let store = courier_idempotency::PostgresStore::connect(server.url(), config)
        .await
        .expect("postgres store");
    (store, server)
}

transaction_race!(
    memory_broker_sqlite_in_transaction,
    "sqlite",
    courier_idempotency::SqliteStore,
    sqlite(),
    "memory"
);
transaction_race!(
    rabbitmq_sqlite_in_transaction,
    "sqlite",
    courier_idempotency::SqliteStore,
    sqlite(),
    "rabbitmq"
);
transaction_race!(
    memory_broker_postgres_in_transaction,
    "postgres",
    courier_idempotency::PostgresStore,
    postgres(),
    "memory"
);
transaction_race!(
    rabbitmq_postgres_in_transaction,
    "postgres",
    courier_idempotency::PostgresStore,
    postgres(),
    "rabbitmq"
);
