//! The order flow end to end, over HTTP, on the embedded default and on
//! NATS JetStream + PostgreSQL: orders placed, stock reserved and mails
//! sent exactly once under redelivery, 409 out of stock, 503 from the
//! open breaker while the stock service is down, one correlation id and
//! one trace per order, and nothing lost while the inventory service is
//! stopped.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Setup, count};
use courier::prelude::*;
use courier_examples::orders::api::StockGuard;
use courier_examples::orders::client::{OrderClient, PlaceOutcome};
use courier_examples::orders::services::SERVICES;
use courier_examples::orders::{OrderFlow, OrderServices, OrderTopics, stock};

/// How long the services may take for what a test waits for.
const PATIENCE: Duration = Duration::from_secs(60);
/// Orders that go through in the main test.
const ORDERS: usize = 6;

fn guard() -> StockGuard {
    StockGuard {
        breaker: courier::resilience::CircuitBreakerConfig::default()
            .failure_threshold(2)
            // Long enough that the calls after the second failure all find
            // it open on a loaded machine; the test waits for the probe.
            .cool_down(Duration::from_secs(5)),
        ..StockGuard::default()
    }
}

async fn start(setup: &Setup) -> OrderServices {
    let flow = OrderFlow::new(setup.broker.clone(), setup.db.clone())
        .topics(OrderTopics::with_prefix(&setup.prefix));
    OrderServices::start(&flow, &SERVICES, "127.0.0.1:0", guard())
        .await
        .expect("services start")
}

/// Waits until `done` holds, or fails with `what` after [`PATIENCE`].
async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn placed(outcome: PlaceOutcome) -> courier_examples::orders::events::Placed {
    match outcome {
        PlaceOutcome::Placed(placed) => placed,
        other => panic!("expected 201, got {other:?}"),
    }
}

async fn orders_end_to_end(setup: Setup) {
    let mut services = start(&setup).await;
    let flow = services.flow.clone();
    let client = OrderClient::new(services.api_url().expect("api"));
    let mut audit = flow
        .broker
        .subscribe(Subscription::new(&flow.topics.order_placed, "audit"))
        .await
        .expect("audit subscription");
    stock::seed(&flow, "apple", 100).await.expect("seed");
    stock::seed(&flow, "pear", 1).await.expect("seed");
    flow.faults.inventory.lose_next(ORDERS as u64);
    flow.faults.email.lose_next(ORDERS as u64);

    // N orders through the API, each a 201.
    let mut orders = Vec::new();
    for i in 0..ORDERS - 1 {
        let outcome = client
            .place("apple", 2, &format!("c{i}@example.com"))
            .await
            .expect("post");
        orders.push(placed(outcome));
    }
    orders.push(placed(
        client
            .place("pear", 1, "p@example.com")
            .await
            .expect("post"),
    ));
    for order in &orders {
        client
            .wait_done(&order.order_id, PATIENCE)
            .await
            .expect("order handled");
    }
    // The last pear is reserved: out of stock.
    let refused = client
        .place("pear", 1, "late@example.com")
        .await
        .expect("post");
    assert_eq!(refused.status().as_u16(), 409, "{refused:?}");

    // Forced redelivery, two ways. Every first ack of inventory and email
    // was lost (set before the orders): each event was handled again.
    // And every OrderPlaced is published again with its message id (on
    // JetStream the broker's duplicate window drops these: nothing arrives).
    let mut events = Vec::new();
    while events.len() < ORDERS {
        let delivery = tokio::time::timeout(PATIENCE, audit.next())
            .await
            .expect("audit in time")
            .expect("audit open")
            .expect("delivery");
        events.push(delivery.message().clone());
        delivery.ack().await.expect("ack");
    }
    for event in events {
        flow.broker
            .publish(&flow.topics.order_placed, event)
            .await
            .expect("publish again");
    }
    // Each event is acked once per delivery that reached the consumer: the
    // originals (after their lost ack's retry) and the republished copies.
    let deliveries = if setup.dedups_publishes {
        ORDERS
    } else {
        2 * ORDERS
    } as u64;
    // Every one of them found its effect done: the retry after each lost
    // ack, and each republished copy.
    let duplicates = deliveries;
    let handled = |consumer: &Option<courier::runtime::RunningConsumer>| {
        consumer
            .as_ref()
            .map_or(0, |c| c.metrics().snapshot().handled)
    };
    wait_until(
        "every delivery handled by inventory and email",
        async || {
            handled(&services.inventory) >= deliveries && handled(&services.email) >= deliveries
        },
    )
    .await;
    let dedup = services.email_dedup.clone().expect("email runs");
    assert_eq!(flow.faults.inventory.lost(), ORDERS);
    assert_eq!(flow.faults.email.lost(), ORDERS);
    assert_eq!(
        flow.counters.inventory_duplicates.load(Ordering::Relaxed),
        duplicates
    );
    assert_eq!(dedup.stats().skipped, duplicates);

    // Exactly once: one reservation and one mail per order, stock reserved once.
    let db = &flow.db;
    for order in &orders {
        let id = order.order_id.as_str();
        let view = client.order(id).await.expect("get").expect("order exists");
        assert_eq!(view.reservations, ["reserved"], "{id}");
        assert_eq!(view.emails.len(), 1, "{id}: {:?}", view.emails);
        // One flow: every service saw the order's correlation id and the trace the API started.
        let services: BTreeSet<_> = view.trace.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(
            services,
            BTreeSet::from(["api", "email", "inventory", "stock"]),
            "{id}"
        );
        assert_eq!(view.trace.len(), 4, "{id}: {:?}", view.trace);
        for sighting in &view.trace {
            assert_eq!(sighting.correlation_id.as_deref(), Some(id), "{sighting:?}");
            assert_eq!(
                sighting.trace_id.as_deref(),
                Some(order.trace_id.as_str()),
                "{sighting:?}"
            );
        }
    }
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM orders WHERE id <> $1", "").await,
        ORDERS as i64
    );
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM reservations WHERE order_id <> $1",
            ""
        )
        .await,
        ORDERS as i64
    );
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM emails WHERE order_id <> $1", "").await,
        ORDERS as i64
    );
    assert_eq!(
        count(db, "SELECT reserved FROM stock WHERE product = $1", "apple").await,
        2 * (ORDERS as i64 - 1)
    );
    assert_eq!(
        count(db, "SELECT reserved FROM stock WHERE product = $1", "pear").await,
        1
    );

    // The stock service goes down: 503, and once the breaker is open, 503 without asking.
    services.stop_stock().await.expect("stop stock");
    let breaker = services.breaker.clone().expect("api runs");
    let mut circuits = Vec::new();
    for _ in 0..4 {
        match client
            .place("apple", 1, "down@example.com")
            .await
            .expect("post")
        {
            PlaceOutcome::Refused(status, body) => {
                assert_eq!(status.as_u16(), 503, "{body:?}");
                circuits.push(body.circuit.expect("a 503 names the circuit's state"));
            }
            other => panic!("placed while the stock service is down: {other:?}"),
        }
    }
    assert_eq!(circuits[2..], ["open", "open"], "{circuits:?}");
    assert!(
        breaker.rejected() >= 2,
        "the open breaker refused {} calls",
        breaker.rejected()
    );
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM orders WHERE id <> $1", "").await,
        ORDERS as i64
    );

    // Back up: after the cool-down a probe goes through and orders flow again.
    services.restart_stock().await.expect("restart stock");
    let deadline = Instant::now() + PATIENCE;
    let recovered = loop {
        match client
            .place("apple", 1, "back@example.com")
            .await
            .expect("post")
        {
            PlaceOutcome::Placed(placed) => break placed,
            PlaceOutcome::Refused(status, _)
                if status.as_u16() == 503 && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("after the outage: {other:?}"),
        }
    };
    client
        .wait_done(&recovered.order_id, PATIENCE)
        .await
        .expect("handled after the outage");
    services.shutdown().await.expect("shutdown");
    setup.close().await;
}

async fn inventory_down_for_a_while(setup: Setup) {
    let mut services = start(&setup).await;
    let flow = services.flow.clone();
    let client = OrderClient::new(services.api_url().expect("api"));
    stock::seed(&flow, "apple", 100).await.expect("seed");
    services.stop_inventory().await.expect("stop inventory");

    let mut orders = Vec::new();
    for i in 0..5 {
        orders.push(placed(
            client
                .place("apple", 1, &format!("w{i}@example.com"))
                .await
                .expect("post"),
        ));
    }
    // The rest of the flow goes on: every mail is sent, no reservation is made.
    for order in &orders {
        let id = order.order_id.clone();
        wait_until("mail sent", async || {
            client
                .order(&id)
                .await
                .expect("get")
                .is_some_and(|view| view.emails.len() == 1)
        })
        .await;
        let view = client.order(&id).await.expect("get").expect("order");
        assert!(
            view.reservations.is_empty(),
            "reserved while inventory is down: {view:?}"
        );
    }
    // Back: the events waited in the broker, and each is handled once.
    services
        .restart_inventory()
        .await
        .expect("restart inventory");
    for order in &orders {
        let view = client
            .wait_done(&order.order_id, PATIENCE)
            .await
            .expect("reserved");
        assert_eq!(view.reservations, ["reserved"]);
    }
    assert_eq!(
        count(
            &flow.db,
            "SELECT reserved FROM stock WHERE product = $1",
            "apple"
        )
        .await,
        5
    );
    services.shutdown().await.expect("shutdown");
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_orders_end_to_end() {
    orders_end_to_end(Setup::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres_orders_end_to_end() {
    orders_end_to_end(Setup::nats_postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_inventory_down_for_a_while() {
    inventory_down_for_a_while(Setup::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres_inventory_down_for_a_while() {
    inventory_down_for_a_while(Setup::nats_postgres().await).await;
}
