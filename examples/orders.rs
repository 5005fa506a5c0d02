//! Publishes typed JSON orders and consumes them, on any broker.
//!
//! ```text
//! cargo run --example orders                       # embedded in-process broker
//! cargo run --example orders --features amqp -- --broker amqp://guest:guest@localhost:5672/%2f
//! ```

use std::time::Duration;

use courier::{Message, StartPosition, Subscription};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u32,
    customer: String,
    total_cents: u64,
}

const ORDERS: u32 = 5;

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
    let subscription = Subscription::new(&topic, "billing").start_from(StartPosition::Earliest);
    broker.provision(&subscription).await?;

    for order_id in 1..=ORDERS {
        let order = OrderPlaced {
            order_id,
            customer: format!("customer-{}", order_id % 2),
            total_cents: 1_000 * u64::from(order_id),
        };
        // Orders of one customer share a key, so they are handled in order.
        let message = Message::json(&order)?.with_key(order.customer.clone());
        broker.publish(&topic, message).await?;
        println!("sent     {order:?}");
    }

    let mut deliveries = broker.subscribe(subscription).await?;
    for _ in 0..ORDERS {
        let delivery = tokio::time::timeout(Duration::from_secs(30), deliveries.next())
            .await?
            .ok_or("subscription ended early")??;
        let order: OrderPlaced = delivery.message().json_as()?;
        println!("received {order:?} (key {:?})", delivery.message().key());
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
