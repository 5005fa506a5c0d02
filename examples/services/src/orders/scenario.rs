//! The scripted scenario `order-flow` runs on start: orders that go
//! through, one out of stock, a redelivered event, a stock service outage
//! and its recovery, each step on the timeline.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::client::{OrderClient, PlaceOutcome};
use super::services::OrderServices;
use super::stock;
use crate::error::{Error, Result};
use crate::timeline::short;

/// How long a step may wait for the services.
const PATIENCE: Duration = Duration::from_secs(30);

/// Runs the scenario against `services` (every service in this process).
///
/// # Errors
///
/// [`Error::Unexpected`] when a step does not go as scripted; the
/// broker's, database's or HTTP client's errors.
pub async fn run(services: &mut OrderServices) -> Result<()> {
    let flow = services.flow.clone();
    let timeline = flow.timeline.clone();
    let base = services
        .api_url()
        .ok_or_else(|| Error::Unexpected("the API does not run here".into()))?;
    let client = OrderClient::new(base);

    stock::seed(&flow, "apple", 10).await?;
    stock::seed(&flow, "pear", 1).await?;
    timeline.note("client", "stock: 10 apples, 1 pear");

    // A redelivery: the first order's acks get lost after its reservation
    // and its mail, so both services get its event again.
    flow.faults.inventory.lose_next(1);
    flow.faults.email.lose_next(1);
    timeline.note("client", "POST /orders 3 × apple (its acks will be lost)");
    let first = expect_placed(client.place("apple", 3, "ada@example.com").await?)?;
    timeline.note("client", "POST /orders 1 × pear");
    let second = expect_placed(client.place("pear", 1, "bob@example.com").await?)?;
    for order in [&first, &second] {
        client.wait_done(order, PATIENCE).await?;
    }
    timeline.note(
        "client",
        "POST /orders 2 × pear (one is left, and it is reserved)",
    );
    expect_status(client.place("pear", 2, "cy@example.com").await?, 409)?;

    let deadline = Instant::now() + PATIENCE;
    while flow.counters.inventory_duplicates.load(Ordering::Relaxed) < 1
        || services
            .email_dedup
            .as_ref()
            .map_or(0, |d| d.stats().skipped)
            < 1
    {
        if Instant::now() > deadline {
            return Err(Error::Unexpected("the duplicate was not seen".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    timeline.note(
        "client",
        format!(
            "duplicates skipped: inventory {} (claim inside its transaction), email {} (IdempotencyLayer)",
            flow.counters.inventory_duplicates.load(Ordering::Relaxed),
            services.email_dedup.as_ref().map_or(0, |d| d.stats().skipped)
        ),
    );
    let view = client.wait_done(&first, PATIENCE).await?;
    timeline.note(
        "client",
        format!(
            "order {}: {} reservation(s), {} mail(s)",
            short(&first),
            view.reservations.len(),
            view.emails.len()
        ),
    );

    // The stock service goes down: the breaker opens and the API answers 503 at once.
    services.stop_stock().await?;
    timeline.note("client", "the stock service stops");
    for _ in 0..4 {
        let started = Instant::now();
        let outcome = client.place("apple", 1, "dee@example.com").await?;
        timeline.note(
            "client",
            format!(
                "POST /orders: {} after {} ms",
                outcome.status(),
                started.elapsed().as_millis()
            ),
        );
        expect_status(outcome, 503)?;
    }
    services.restart_stock().await?;
    timeline.note("client", "the stock service is back");
    let deadline = Instant::now() + PATIENCE;
    let last = loop {
        match client.place("apple", 1, "eve@example.com").await? {
            PlaceOutcome::Placed(placed) => break placed.order_id,
            PlaceOutcome::Refused(status, _)
                if status.as_u16() == 503 && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return Err(Error::Unexpected(format!("after the outage: {other:?}"))),
        }
    };
    let view = client.wait_done(&last, PATIENCE).await?;
    for sighting in &view.trace {
        timeline.note(
            "client",
            format!(
                "order {} seen by {:<9} correlation {} trace {}",
                short(&last),
                sighting.service,
                sighting.correlation_id.as_deref().map_or("-", short),
                sighting.trace_id.as_deref().unwrap_or("-")
            ),
        );
    }
    Ok(())
}

fn expect_placed(outcome: PlaceOutcome) -> Result<String> {
    match outcome {
        PlaceOutcome::Placed(placed) => Ok(placed.order_id),
        other => Err(Error::Unexpected(format!("expected 201, got {other:?}"))),
    }
}

fn expect_status(outcome: PlaceOutcome, status: u16) -> Result<()> {
    if outcome.status().as_u16() == status {
        Ok(())
    } else {
        Err(Error::Unexpected(format!(
            "expected {status}, got {outcome:?}"
        )))
    }
}
