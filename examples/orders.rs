//! A billing service on any broker: typed orders handled in order per
//! customer, an invoice published as a follow-up in the same flow, retries,
//! and the invalid order dead-lettered with its reason.
//!
//! ```text
//! cargo run --example orders                       # embedded in-process broker
//! cargo run --example orders --features amqp -- --broker amqp://guest:guest@localhost:5672/%2f
//! cargo run --example orders --features kafka -- --broker kafka://localhost:9092
//! cargo run --example orders --features nats -- --broker nats://localhost:4222
//! ```

use std::time::Duration;

use courier::delivery::DLQ_REASON;
use courier::prelude::*;
use courier::runtime::{self, RetryPolicy, TimeoutLayer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u32,
    customer: String,
    total_cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct InvoiceIssued {
    order_id: u32,
    total_cents: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().skip_while(|a| a != "--broker").nth(1);
    let broker = courier::connect(url.as_deref().unwrap_or("memory://")).await?;
    // Run-unique topics, so the example can run again on a broker that keeps history.
    let run = &MessageId::new().to_string()[24..];
    let (orders, invoices) = (format!("orders.{run}"), format!("invoices.{run}"));
    let dead_letters = Subscription::new(format!("{orders}.dlq"), "operations");
    broker.provision(&dead_letters).await?; // keeps the dead letters for whoever looks
    let (printed_tx, mut printed) = tokio::sync::mpsc::unbounded_channel();

    let billing = {
        let (broker, invoices) = (broker.clone(), invoices.clone());
        runtime::envelope(move |Envelope { body, meta }: Envelope<OrderPlaced>| {
            let (broker, invoices) = (broker.clone(), invoices.clone());
            async move {
                let OrderPlaced {
                    order_id,
                    total_cents,
                    ..
                } = body;
                if total_cents == 0 {
                    return Err(HandlerError::permanent("an order cannot be free"));
                }
                // Caused by the order: same correlation id, causation = the order's id.
                let invoice = Message::from_json(&InvoiceIssued {
                    order_id,
                    total_cents,
                })?;
                broker.publish(&invoices, meta.follow_up(invoice)).await?;
                Ok(())
            }
        })
    };
    let mailing = runtime::envelope(move |invoice: Envelope<InvoiceIssued>| {
        let printed_tx = printed_tx.clone();
        async move {
            println!(
                "invoice {:?} for flow {}",
                invoice.body,
                invoice.meta.correlation_id().unwrap_or("?")
            );
            printed_tx.send(())?;
            Ok(())
        }
    });
    let app = App::new()
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .consumer(
            Consumer::builder(&broker, Subscription::new(&orders, "billing"), billing)
                .retry(RetryPolicy::exponential().max_attempts(3)),
        )
        .consumer(Consumer::builder(
            &broker,
            Subscription::new(&invoices, "mailing"),
            mailing,
        ));
    let running = app.start().await?; // subscribed: nothing published from here on is missed

    for order_id in 1..=6 {
        let customer = format!("customer-{}", order_id % 2);
        // Order 3 is free, hence invalid: it is dead-lettered, and order 5
        // of the same customer goes on after it.
        let total_cents = 1_000 * u64::from(order_id) * u64::from(order_id != 3);
        let order = OrderPlaced {
            order_id,
            customer: customer.clone(),
            total_cents,
        };
        // Orders of one customer share a key, so they are handled in order.
        broker
            .publish(&orders, Message::from_json(&order)?.with_key(customer))
            .await?;
    }
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(30), printed.recv())
            .await?
            .ok_or("stopped")?;
    }
    let stats = running.shutdown().await?;
    println!(
        "billing: {} handled, {} dead-lettered",
        stats[0].handled, stats[0].dead_lettered
    );

    // The dead letter: the original message, with why and where it failed.
    let mut dead = broker.subscribe(dead_letters).await?;
    let letter = tokio::time::timeout(Duration::from_secs(30), dead.next())
        .await?
        .ok_or("ended")??;
    let (order, reason) = (
        letter.message().json::<OrderPlaced>()?,
        letter.message().header(DLQ_REASON),
    );
    println!("dead letter {order:?}: {}", reason.unwrap_or("?"));
    letter.ack().await?;
    broker.close().await?;
    Ok(())
}
