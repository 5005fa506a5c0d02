//! One delivery: attempts with backoff, then ack, dead-letter or requeue.
//!
//! The path of a message handled on its first attempt is kept small (its
//! future is moved onto the heap for every message); retries and
//! dead-lettering live in boxed futures of their own, allocated only when
//! an attempt fails.

use std::future::Future;
use std::ops::Deref;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::Poll;
use std::time::SystemTime;

use futures::FutureExt;
use futures::future::Either;
use tracing::Instrument;

use super::dead_letter::{CopyOutcome, publish_copy};
use super::error::{FailureKind, HandlerError, HandlerResult, Panicked};
use super::shared::{Running, Shared};
use super::slots::{Held, Slot as SlotPermit};

/// Wait before trying a deferred message again when the deferral named no delay.
const DEFERRAL: std::time::Duration = std::time::Duration::from_millis(100);
use super::handler::Handler;
use super::request::Request;
use crate::delivery::{DeadLetter, Delivery, Nack};
use crate::message::MessageId;
use crate::telemetry::Traced;

/// First and last failure time of a delivery's attempts.
#[derive(Clone, Copy)]
struct Failures {
    first: SystemTime,
    last: SystemTime,
}

impl Failures {
    fn now() -> Self {
        let now = SystemTime::now();
        Failures {
            first: now,
            last: now,
        }
    }
}

/// Handles `delivery` to the end and settles it.
///
/// With `first_permit` (or when the consumer is serial and needs no
/// slots), the first attempt starts at once. Otherwise it waits for a
/// concurrency slot; if the shutdown starts before it gets one, the
/// delivery is returned untouched (nothing was attempted) so the caller can
/// give it back in order. Returned boxed, a rare case: the output of every
/// delivery's future is then 8 bytes, not a delivery's 168 written out
/// when it completes.
///
/// `running` is a reference or an `Arc`: the future of a delivery handled on
/// a task of its own owns it. That future is moved to the heap once per
/// message, so it is kept small: the delivery is held once, and the rare
/// paths (waiting for a slot, retrying, requeueing) are boxed futures.
///
/// An `async` block, not an `async fn`: an async fn's future keeps its
/// arguments twice (as passed, and moved into its body), the delivery
/// included.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice"
)]
pub(crate) fn process<S, H>(
    running: S,
    mut delivery: Delivery,
    first_permit: Option<SlotPermit>,
) -> impl Future<Output = Option<Box<Delivery>>>
where
    S: Deref<Target = Running<H>> + Send,
    H: Handler,
{
    async move {
        let running = &*running;
        let shared = &running.shared;
        // Held from here, so a slot is given back however this ends.
        let first_permit = first_permit.map(|permit| shared.slots.hold(permit));
        let traced = shared.telemetry.begin(&delivery);
        let slot = match first_permit {
            Some(permit) => Some(permit),
            None if shared.serial => None,
            None => Some({
                if shared.stop.is_triggered() {
                    return Some(Box::new(delivery));
                }
                match shared.slots.try_take() {
                    Some(permit) => shared.slots.hold(permit),
                    None => match Box::pin(wait_for_slot(shared, true)).await {
                        Slot::Acquired(permit) => permit,
                        Slot::Stopped => return Some(Box::new(delivery)),
                        Slot::Aborted => {
                            Box::pin(requeue(shared, [delivery])).await;
                            return None;
                        }
                    },
                }
            }),
        };
        match attempt(running, &delivery, 1, slot, &traced).await {
            Some(Ok(())) => {
                let span = shared
                    .telemetry
                    .settle_span(Some(&traced), "ack", delivery.message());
                // Acked in place: the delivery is not moved into a future.
                // Without a span, not instrumented: entering and leaving a
                // disabled span on every poll and on drop costs more than
                // the memory broker's whole ack.
                let outcome = if !span.is_none() {
                    delivery.ack_in_place().instrument(span).await
                } else if delivery.ack_at_once() {
                    Ok(())
                } else {
                    delivery.ack_in_place().await
                };
                record(
                    shared,
                    outcome,
                    &shared.counters.handled,
                    delivery.message().id(),
                );
            }
            Some(Err(error)) => Box::pin(retry(running, delivery, error, &traced)).await,
            None => Box::pin(requeue(shared, [delivery])).await,
        }
        None
    }
}

enum Slot<'a> {
    Acquired(Held<'a>),
    /// The shutdown started before the first attempt.
    Stopped,
    /// The shutdown deadline passed.
    Aborted,
}

async fn wait_for_slot(shared: &Shared, first_attempt: bool) -> Slot<'_> {
    tokio::select! {
        biased;
        permit = shared.slots.take() => Slot::Acquired(shared.slots.hold(permit)),
        () = shared.stop.token.cancelled(), if first_attempt => Slot::Stopped,
        () = shared.abort.cancelled() => Slot::Aborted,
    }
}

/// One attempt, holding a concurrency slot (none when serial); `None` if
/// the shutdown deadline cut it short. A panic anywhere in the handler
/// stack is caught here, without a box of its own.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice"
)]
fn attempt<'a, H: Handler>(
    running: &'a Running<H>,
    delivery: &'a Delivery,
    attempt: u32,
    slot: Option<Held<'a>>,
    traced: &'a Traced,
) -> impl Future<Output = Option<HandlerResult>> + 'a {
    // An async block, as `process`: an async fn would keep its arguments twice.
    async move {
        let shared = &running.shared;
        let counters = &shared.counters;
        counters.add(&counters.running);
        let call = {
            let request = Request::shared(delivery.message(), &shared.topic, &shared.group)
                .with_attempt(attempt)
                .with_delivery_count(delivery.delivery_count());
            // A handler may panic before its future exists (a closure's
            // body before its `async` block, a layer's `call`): that fails
            // the attempt too, rather than the consumer's task.
            let handler = &running.handler;
            match panic::catch_unwind(AssertUnwindSafe(|| handler.call_unboxed(request))) {
                Ok(call) => Either::Left(traced.instrument(delivery.message(), call)),
                Err(payload) => Either::Right(std::future::ready(Err(HandlerError::transient(
                    Panicked::from_payload(&*payload),
                )))),
            }
        };
        let call = AssertUnwindSafe(call).catch_unwind();
        let started = shared.telemetry.attempt_started();
        tokio::pin!(call);
        // Most attempts finish on their first poll; only one that waits needs
        // to watch the shutdown deadline too.
        let outcome = match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
            Poll::Ready(outcome) => Some(outcome),
            // Boxed: the deadline's future is not part of every message's.
            Poll::Pending => Box::pin(until_done_or_aborted(shared, call.as_mut())).await,
        }
        .map(|outcome| {
            outcome.unwrap_or_else(|payload| {
                Err(HandlerError::transient(Panicked::from_payload(&*payload)))
            })
        });
        counters.sub(&counters.running);
        if let Some(result) = &outcome {
            shared.telemetry.attempt_finished(started, result.is_err());
        }
        drop(slot);
        outcome
    }
}

/// `call`'s outcome, or `None` once the shutdown deadline has passed.
async fn until_done_or_aborted<F: Future>(shared: &Shared, call: Pin<&mut F>) -> Option<F::Output> {
    tokio::select! {
        biased;
        outcome = call => Some(outcome),
        () = shared.abort.cancelled() => None,
    }
}

/// After a failed first attempt: retries with backoff, then settles.
async fn retry<H: Handler>(
    running: &Running<H>,
    delivery: Delivery,
    first_error: HandlerError,
    traced: &Traced,
) {
    let shared = &running.shared;
    let counters = &shared.counters;
    let mut delays = shared.retry.delays();
    let mut failures = Failures::now();
    let mut error = first_error;
    let mut attempts = 1u32;
    counters.add(&counters.failed);
    loop {
        let delay = match error.kind() {
            FailureKind::Permanent => break,
            FailureKind::Deferred => error.retry_after_hint().unwrap_or(DEFERRAL),
            _ => {
                let Some(backoff) = delays.next() else {
                    break;
                };
                error
                    .retry_after_hint()
                    .map_or(backoff, |hint| hint.max(backoff))
            }
        };
        counters.add(&counters.retried);
        shared.telemetry.retried();
        tracing::debug!(
            topic = %shared.topic, id = %delivery.message().id(), attempt = attempts, ?delay,
            error = %error, "handler failed; retrying"
        );
        let slot = tokio::select! {
            biased;
            () = shared.abort.cancelled() => None,
            () = tokio::time::sleep(delay) => if shared.serial {
                Some(None)
            } else {
                match shared.slots.try_take() {
                    Some(permit) => Some(Some(shared.slots.hold(permit))),
                    None => match wait_for_slot(shared, false).await {
                        Slot::Acquired(permit) => Some(Some(permit)),
                        Slot::Stopped | Slot::Aborted => None,
                    },
                }
            },
        };
        let Some(slot) = slot else {
            return requeue(shared, [delivery]).await;
        };
        attempts += 1;
        match attempt(running, &delivery, attempts, slot, traced).await {
            Some(Ok(())) => return settle(shared, delivery, Settle::Ack, Some(traced)).await,
            Some(Err(next)) => {
                counters.add(&counters.failed);
                failures.last = SystemTime::now();
                error = next;
            }
            None => return requeue(shared, [delivery]).await,
        }
    }
    tracing::warn!(
        topic = %shared.topic, id = %delivery.message().id(), attempts, error = %error,
        "handler gave up; dead-lettering"
    );
    let mut dead_letter =
        DeadLetter::new(error.reason()).with_attempts(attempts, failures.first, failures.last);
    if let Some(topic) = &shared.dead_letter_topic {
        dead_letter = dead_letter.with_topic(topic.clone());
    }
    let how = match publish_copy(shared, &delivery, &dead_letter).await {
        CopyOutcome::Published => Settle::DeadLettered,
        CopyOutcome::Unsupported => Settle::Nack(Nack::DeadLetter(dead_letter)),
        CopyOutcome::Aborted => return requeue(shared, [delivery]).await,
    };
    settle(shared, delivery, how, Some(traced)).await;
}

/// How a delivery is settled.
enum Settle {
    Ack,
    Nack(Nack),
    /// Its dead-letter copy was published: remove the original.
    DeadLettered,
}

/// Settles the delivery and counts the outcome; the settle span is a child
/// of the delivery's process span, when it has one.
async fn settle(shared: &Shared, delivery: Delivery, how: Settle, traced: Option<&Traced>) {
    let counters = &shared.counters;
    let id = delivery.message().id().clone();
    let telemetry = &shared.telemetry;
    let (outcome, counter) = match how {
        Settle::Ack => {
            let span = telemetry.settle_span(traced, "ack", delivery.message());
            (delivery.ack().instrument(span).await, &counters.handled)
        }
        Settle::Nack(nack) => {
            let dead_letter = matches!(nack, Nack::DeadLetter(_));
            let (counter, operation) = if dead_letter {
                (&counters.dead_lettered, "dead_letter")
            } else {
                (&counters.requeued, "nack")
            };
            let span = telemetry.settle_span(traced, operation, delivery.message());
            let outcome = delivery.nack(nack).instrument(span).await;
            if dead_letter && outcome.is_ok() {
                telemetry.dead_lettered(traced);
            }
            (outcome, counter)
        }
        Settle::DeadLettered => {
            let span = telemetry.settle_span(traced, "dead_letter", delivery.message());
            let outcome = delivery.settle_dead_lettered().instrument(span).await;
            if outcome.is_ok() {
                telemetry.dead_lettered(traced);
            }
            (outcome, &counters.dead_lettered)
        }
    };
    record(shared, outcome, counter, &id);
}

/// Counts a settlement's outcome; the delivery is no longer in flight.
#[inline]
fn record(shared: &Shared, outcome: crate::Result<()>, counter: &AtomicU64, id: &MessageId) {
    let counters = &shared.counters;
    match outcome {
        Ok(()) => counters.add(counter),
        Err(error) => {
            counters.add(&counters.settle_errors);
            tracing::warn!(
                topic = %shared.topic, %id, %error,
                "settling a delivery failed; it will come back"
            );
        }
    }
    counters.sub(&counters.in_flight);
}

/// Gives deliveries back unhandled, in the order given.
pub(crate) async fn requeue(shared: &Shared, deliveries: impl IntoIterator<Item = Delivery>) {
    for delivery in deliveries {
        Box::pin(settle(shared, delivery, Settle::Nack(Nack::Requeue), None)).await;
    }
}
