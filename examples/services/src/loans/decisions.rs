//! The decision recorder: persists each flow's end, the decision a level
//! published or the dead letter of a malformed application (with the
//! reason the consumer runtime wrote into the dead letter's headers).

use courier::Subscription;
use courier::delivery::DLQ_REASON;
use courier::runtime::{self, Consumer, Envelope, HandlerError, RetryPolicy, RunningConsumer};

use super::events::{LoanApplication, LoanDecided};
use super::flow::{DECISIONS_GROUP, LoanFlow};
use crate::clock::now_ms;
use crate::db::with_backend;
use crate::flow_trace;

/// The final status, written once.
const DECIDE: &str = "UPDATE loans SET status = $2, reason = $3, decided_at_ms = $4
     WHERE reference = $1 AND decided_at_ms IS NULL";

/// Starts the consumers of decisions and of dead-lettered applications.
///
/// # Errors
///
/// The broker's error when a subscription fails.
pub async fn start(flow: &LoanFlow) -> courier::Result<[RunningConsumer; 2]> {
    let service = flow.clone();
    let decisions = runtime::envelope(move |decided: Envelope<LoanDecided>| {
        let flow = service.clone();
        async move {
            let Envelope { body, meta } = decided;
            let status = if body.approved {
                "approved"
            } else {
                "rejected"
            };
            let reason = (!body.approved).then_some(body.reason.as_str());
            persist(
                &flow,
                &body.reference,
                status,
                reason,
                flow_trace::ids(meta.message()),
            )
            .await?;
            flow.timeline.note(
                "decisions",
                format!("{}: {status} by {}", body.reference, body.level),
            );
            Ok(())
        }
    });
    let service = flow.clone();
    let dead_letters = runtime::envelope(move |dead: Envelope<LoanApplication>| {
        let flow = service.clone();
        async move {
            let Envelope { body, meta } = dead;
            let reason = meta
                .header(DLQ_REASON)
                .unwrap_or("no reason given")
                .to_owned();
            persist(
                &flow,
                &body.reference,
                "dead-lettered",
                Some(&reason),
                flow_trace::ids(meta.message()),
            )
            .await?;
            flow.timeline.note(
                "decisions",
                format!("{}: dead-lettered: {reason}", body.reference),
            );
            Ok(())
        }
    });
    let retry = RetryPolicy::exponential().max_attempts(8);
    let decided = Subscription::new(&flow.topics.decided, DECISIONS_GROUP);
    let dead = Subscription::new(&flow.topics.submitted_dead_letters, DECISIONS_GROUP);
    Ok([
        Consumer::builder(&flow.broker, decided, decisions)
            .retry(retry)
            .start()
            .await?,
        Consumer::builder(&flow.broker, dead, dead_letters)
            .retry(retry)
            .start()
            .await?,
    ])
}

async fn persist(
    flow: &LoanFlow,
    reference: &str,
    status: &str,
    reason: Option<&str>,
    ids: (Option<String>, Option<String>),
) -> Result<(), HandlerError> {
    with_backend!(&*flow.db, b => {
        let mut tx = b.pool.begin().await.map_err(HandlerError::transient)?;
        sqlx::query(DECIDE)
            .bind(reference)
            .bind(status)
            .bind(reason)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(HandlerError::transient)?;
        flow_trace::record!(&mut *tx, reference, "decisions", ids)
            .await
            .map_err(HandlerError::transient)?;
        tx.commit().await.map_err(HandlerError::transient)?;
    });
    Ok(())
}
