//! The email service: "sends" a confirmation for each `OrderPlaced` (it
//! writes the mail into the `emails` table). Deduplicated by the
//! [`IdempotencyLayer`] around its handler: the layer claims the message
//! id in the store before the handler runs, completes it after, and acks a
//! redelivery without calling the handler.

use std::time::Duration;

use courier::Subscription;
use courier::idempotency::IdempotencyLayer;
use courier::runtime::{self, Consumer, Envelope, HandlerError, RetryPolicy, RunningConsumer};

use super::events::OrderPlaced;
use super::flow::{EMAIL_GROUP, OrderFlow};
use crate::clock::now_ms;
use crate::db::with_backend;
use crate::flow_trace;
use crate::timeline::short;

/// Writes the sent mail.
const SEND: &str =
    "INSERT INTO emails (order_id, recipient, subject, sent_at_ms) VALUES ($1, $2, $3, $4)";

/// Starts the email consumer; the returned layer counts the duplicates it
/// skipped ([`IdempotencyLayer::stats`]).
///
/// # Errors
///
/// The broker's error when the subscription fails.
pub async fn start(flow: &OrderFlow) -> courier::Result<(RunningConsumer, IdempotencyLayer)> {
    let service = flow.clone();
    let handler = runtime::envelope(move |placed: Envelope<OrderPlaced>| {
        let flow = service.clone();
        async move {
            let Envelope { body, meta } = placed;
            let subject = format!(
                "Your order of {} × {} is confirmed",
                body.quantity, body.product
            );
            with_backend!(&*flow.db, b => {
                let mut tx = b.pool.begin().await.map_err(HandlerError::transient)?;
                sqlx::query(SEND)
                    .bind(&body.order_id)
                    .bind(&body.email)
                    .bind(&subject)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await
                    .map_err(HandlerError::transient)?;
                flow_trace::record!(&mut *tx, &body.order_id, "email", flow_trace::ids(meta.message()))
                    .await
                    .map_err(HandlerError::transient)?;
                tx.commit().await.map_err(HandlerError::transient)?;
            });
            flow.timeline.note(
                "email",
                format!(
                    "mailed {} about order {}",
                    body.email,
                    short(&body.order_id)
                ),
            );
            Ok(())
        }
    });
    let idempotency = IdempotencyLayer::new(flow.db.store()).lease(Duration::from_secs(30));
    let subscription = Subscription::new(&flow.topics.order_placed, EMAIL_GROUP);
    let running = Consumer::builder(&flow.broker, subscription, handler)
        .layer(flow.faults.email.layer("email", flow.timeline.clone()))
        .concurrency(16)
        .retry(RetryPolicy::exponential().max_attempts(8))
        .layer(idempotency.clone())
        .start()
        .await?;
    Ok((running, idempotency))
}
