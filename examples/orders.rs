//! A service that publishes typed JSON orders and handles them with the
//! consumer runtime (per-customer ordering, retries, dead-lettering), on any
//! broker.
//!
//! ```text
//! cargo run --example orders                       # embedded in-process broker
//! cargo run --example orders --features amqp -- --broker amqp://guest:guest@localhost:5672/%2f
//! cargo run --example orders --features kafka -- --broker kafka://localhost:9092
//! cargo run --example orders --features nats -- --broker nats://localhost:4222
//! ```

use std::time::Duration;

use courier::runtime::{self, Consumer, HandlerError, RetryPolicy, TimeoutLayer};
use courier::{Message, Subscription};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u32,
    customer: String,
    total_cents: u64,
}

const ORDERS: u32 = 6;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = broker_url();
    let broker = courier::connect(&url).await?;
    println!(
        "connected to {} ({})",
        courier::error::redact_url(&url),
        broker.name()
    );

    // Run-unique names, so the example can run again on a broker that keeps
    // history.
    let run = courier::MessageId::new().to_string()[24..].to_owned();
    let topic = format!("orders.placed.{run}");

    let (handled_tx, mut handled_rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = Consumer::builder(
        &broker,
        Subscription::new(&topic, "billing"),
        runtime::typed(move |order: OrderPlaced| {
            let handled_tx = handled_tx.clone();
            async move {
                if order.total_cents == 0 {
                    return Err(HandlerError::permanent("an order cannot be free"));
                }
                println!("handled  {order:?}");
                handled_tx.send(order.order_id)?;
                Ok(())
            }
        }),
    )
    .concurrency(4)
    .retry(RetryPolicy::exponential().max_attempts(3))
    .layer(TimeoutLayer::new(Duration::from_secs(5)))
    .build();
    // The groups exist from now on and keep every message published to
    // them: the orders, and the dead letters for whoever looks into them.
    broker.provision(consumer.subscription()).await?;
    let dead_letters = Subscription::new(format!("{topic}.dlq"), "operations");
    broker.provision(&dead_letters).await?;
    let shutdown = consumer.shutdown_handle();
    let running = tokio::spawn(consumer.run());

    for order_id in 1..=ORDERS {
        let order = OrderPlaced {
            order_id,
            customer: format!("customer-{}", order_id % 2),
            // Order 3 is invalid: it goes to the dead-letter topic, and order 5
            // of the same customer is handled after it.
            total_cents: if order_id == 3 {
                0
            } else {
                1_000 * u64::from(order_id)
            },
        };
        // Orders of one customer share a key, so they are handled in order.
        let message = Message::from_json(&order)?.with_key(order.customer.clone());
        broker.publish(&topic, message).await?;
        println!("sent     {order:?}");
    }

    for _ in 1..ORDERS {
        tokio::time::timeout(Duration::from_secs(30), handled_rx.recv())
            .await?
            .ok_or("consumer stopped early")?;
    }
    shutdown.shutdown();
    let stats = running.await??;
    println!(
        "consumer stopped: {} handled, {} dead-lettered",
        stats.handled, stats.dead_lettered
    );

    // The dead letter: the original message, with why and where it failed.
    let mut dead = broker.subscribe(dead_letters).await?;
    for _ in 0..stats.dead_lettered {
        let delivery = tokio::time::timeout(Duration::from_secs(30), dead.next())
            .await?
            .ok_or("dead-letter stream ended")??;
        let order: OrderPlaced = delivery.message().json()?;
        let header = |name| delivery.message().headers().get(name).unwrap_or("?");
        println!(
            "dead letter {order:?}: {} (from {}, group {})",
            header(courier::delivery::DLQ_REASON),
            header(courier::delivery::DLQ_ORIGINAL_TOPIC),
            header(courier::delivery::DLQ_GROUP),
        );
        delivery.ack().await?;
    }
    broker.close().await?;
    Ok(())
}

fn broker_url() -> String {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--broker" {
            return args.next().expect("--broker needs a URL");
        }
        if let Some(url) = arg.strip_prefix("--broker=") {
            return url.to_owned();
        }
    }
    "memory://".to_owned()
}
