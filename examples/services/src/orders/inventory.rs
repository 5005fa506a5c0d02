//! The inventory service: reserves stock for each `OrderPlaced`, exactly
//! once. The claim on the idempotency store happens inside the same
//! database transaction as the reservation (`claim_in`), so a redelivered
//! event finds the key done and changes nothing, with no window between
//! the write and the mark.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use courier::Subscription;
use courier::idempotency::{Claim, IdempotencyKey};
use courier::runtime::{self, Consumer, Envelope, HandlerError, RetryPolicy, RunningConsumer};

use super::events::OrderPlaced;
use super::flow::{INVENTORY_GROUP, OrderFlow};
use crate::clock::now_ms;
use crate::db::with_backend;
use crate::flow_trace;
use crate::timeline::short;

/// Takes `quantity` of the product if that much is free; returns the new
/// reserved count when it did.
const RESERVE: &str = "UPDATE stock SET reserved = reserved + $1
     WHERE product = $2 AND on_hand - reserved >= $1 RETURNING reserved";

/// Records the reservation (or its refusal).
const RECORD: &str =
    "INSERT INTO reservations (order_id, product, quantity, outcome, created_at_ms)
     VALUES ($1, $2, $3, $4, $5)";

/// What one delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Reserved,
    Insufficient,
    Duplicate,
}

/// Starts the inventory consumer.
///
/// # Errors
///
/// The broker's error when the subscription fails.
pub async fn start(flow: &OrderFlow) -> courier::Result<RunningConsumer> {
    let service = flow.clone();
    let handler = runtime::envelope(move |placed: Envelope<OrderPlaced>| {
        let flow = service.clone();
        async move {
            let Envelope { body, meta } = placed;
            let key = IdempotencyKey::new(INVENTORY_GROUP, meta.id().to_string());
            let outcome = with_backend!(&*flow.db, b => {
                let mut tx = b.pool.begin().await.map_err(HandlerError::transient)?;
                match b.store.claim_in(&mut tx, &key).await.map_err(HandlerError::transient)? {
                    Claim::Claimed(_) => {
                        let reserved: Option<(i64,)> = sqlx::query_as(RESERVE)
                            .bind(body.quantity)
                            .bind(&body.product)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(HandlerError::transient)?;
                        let outcome = if reserved.is_some() { Outcome::Reserved } else { Outcome::Insufficient };
                        sqlx::query(RECORD)
                            .bind(&body.order_id)
                            .bind(&body.product)
                            .bind(body.quantity)
                            .bind(match outcome { Outcome::Reserved => "reserved", _ => "insufficient stock" })
                            .bind(now_ms())
                            .execute(&mut *tx)
                            .await
                            .map_err(HandlerError::transient)?;
                        flow_trace::record!(&mut *tx, &body.order_id, "inventory", flow_trace::ids(meta.message()))
                            .await
                            .map_err(HandlerError::transient)?;
                        tx.commit().await.map_err(HandlerError::transient)?;
                        outcome
                    }
                    Claim::AlreadyDone { .. } => Outcome::Duplicate,
                    Claim::InProgress { until } => {
                        let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
                        return Err(HandlerError::deferred("claimed by another worker", wait));
                    }
                }
            });
            let order = &body.order_id;
            match outcome {
                Outcome::Reserved => flow.timeline.note(
                    "inventory",
                    format!(
                        "reserved {} × {} for order {}",
                        body.quantity,
                        body.product,
                        short(order)
                    ),
                ),
                Outcome::Insufficient => flow.timeline.note(
                    "inventory",
                    format!(
                        "could not reserve {} × {} for order {}",
                        body.quantity,
                        body.product,
                        short(order)
                    ),
                ),
                Outcome::Duplicate => {
                    flow.counters
                        .inventory_duplicates
                        .fetch_add(1, Ordering::Relaxed);
                    flow.timeline.note(
                        "inventory",
                        format!(
                            "order {} again (message {}): already reserved, skipped",
                            short(order),
                            meta.id()
                        ),
                    );
                }
            }
            Ok(())
        }
    });
    let subscription = Subscription::new(&flow.topics.order_placed, INVENTORY_GROUP);
    Consumer::builder(&flow.broker, subscription, handler)
        .layer(
            flow.faults
                .inventory
                .layer("inventory", flow.timeline.clone()),
        )
        .concurrency(16)
        .retry(RetryPolicy::exponential().max_attempts(8))
        .start()
        .await
}
