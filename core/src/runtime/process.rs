//! One delivery: attempts with backoff, then ack, dead-letter or requeue.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::OwnedSemaphorePermit;

use super::consumer::Shared;
use super::error::HandlerError;
use super::handler::{Handler, Request};
use super::retry::Delays;
use super::stats::Counters;
use crate::delivery::{DeadLetter, Delivery, Nack};

/// How a delivery ends.
enum Verdict {
    Ack,
    DeadLetter(HandlerError),
    Requeue,
}

/// First and last failure time of a delivery's attempts.
#[derive(Clone, Copy)]
struct Failures {
    first: SystemTime,
    last: SystemTime,
}

/// Handles `delivery` to the end and settles it.
///
/// With `first_permit`, the first attempt starts at once. Without it, the
/// first attempt waits for a concurrency slot; if the shutdown starts before
/// it gets one, the delivery is returned untouched (nothing was attempted)
/// so the caller can give it back in order.
pub(crate) async fn process(
    shared: &Arc<Shared>,
    delivery: Delivery,
    first_permit: Option<OwnedSemaphorePermit>,
) -> Option<Delivery> {
    let counters = &shared.counters;
    if first_permit.is_none() && shared.stop.is_cancelled() {
        return Some(delivery);
    }
    let mut permit = first_permit;
    let mut attempt = 0u32;
    let mut failures: Option<Failures> = None;
    let mut delays: Option<Delays> = None;
    let verdict = loop {
        attempt += 1;
        let slot = match permit.take() {
            Some(permit) => permit,
            None => match shared.slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => tokio::select! {
                    biased;
                    permit = shared.slots.clone().acquire_owned() => permit.expect("slots are never closed"),
                    () = shared.stop.cancelled(), if attempt == 1 => return Some(delivery),
                    () = shared.abort.cancelled() => break Verdict::Requeue,
                },
            },
        };
        Counters::add(&counters.running);
        let request = Request::new(delivery.message(), &shared.topic, &shared.group)
            .with_attempt(attempt)
            .with_delivery_count(delivery.delivery_count());
        let outcome = tokio::select! {
            biased;
            outcome = shared.handler.call(request) => Some(outcome),
            () = shared.abort.cancelled() => None,
        };
        Counters::sub(&counters.running);
        drop(slot);
        let error = match outcome {
            None => break Verdict::Requeue,
            Some(Ok(())) => break Verdict::Ack,
            Some(Err(error)) => error,
        };
        Counters::add(&counters.failed);
        let now = SystemTime::now();
        failures = Some(Failures {
            first: failures.map_or(now, |f| f.first),
            last: now,
        });
        if error.is_permanent() {
            break Verdict::DeadLetter(error);
        }
        let Some(backoff) = delays.get_or_insert_with(|| shared.retry.delays()).next() else {
            break Verdict::DeadLetter(error);
        };
        let delay = error
            .retry_after_hint()
            .map_or(backoff, |hint| hint.max(backoff));
        Counters::add(&counters.retried);
        tracing::debug!(
            topic = %shared.topic, id = %delivery.message().id(), attempt, ?delay,
            error = %error, "handler failed; retrying"
        );
        tokio::select! {
            biased;
            () = shared.abort.cancelled() => break Verdict::Requeue,
            () = tokio::time::sleep(delay) => {}
        }
    };
    settle(shared, delivery, verdict, attempt, failures).await;
    None
}

async fn settle(
    shared: &Shared,
    delivery: Delivery,
    verdict: Verdict,
    attempts: u32,
    failures: Option<Failures>,
) {
    let counters = &shared.counters;
    let id = delivery.message().id().clone();
    let (outcome, counter) = match verdict {
        Verdict::Ack => (delivery.ack().await, &counters.handled),
        Verdict::Requeue => (delivery.nack(Nack::Requeue).await, &counters.requeued),
        Verdict::DeadLetter(error) => {
            let now = SystemTime::now();
            let failures = failures.unwrap_or(Failures {
                first: now,
                last: now,
            });
            tracing::warn!(
                topic = %shared.topic, %id, attempts, error = %error,
                "handler gave up; dead-lettering"
            );
            let mut dead_letter = DeadLetter::new(error.reason()).with_attempts(
                attempts,
                failures.first,
                failures.last,
            );
            if let Some(topic) = &shared.dead_letter_topic {
                dead_letter = dead_letter.to_topic(topic.clone());
            }
            (
                delivery.nack(Nack::DeadLetter(dead_letter)).await,
                &counters.dead_lettered,
            )
        }
    };
    match outcome {
        Ok(()) => Counters::add(counter),
        Err(error) => {
            Counters::add(&counters.settle_errors);
            tracing::warn!(topic = %shared.topic, %id, %error, "settling a delivery failed; it will come back");
        }
    }
    Counters::sub(&counters.in_flight);
}

/// Gives deliveries back unhandled, in the order given.
pub(crate) async fn requeue(shared: &Shared, deliveries: impl IntoIterator<Item = Delivery>) {
    for delivery in deliveries {
        settle(shared, delivery, Verdict::Requeue, 0, None).await;
    }
}
