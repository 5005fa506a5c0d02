//! Publishing a dead-letter copy until the broker takes it.
//!
//! The delivery is held meanwhile (it stays in flight, unsettled, and its
//! ordering lane stays held), so a dead-letter topic that refuses for a
//! while makes the runtime wait, with a jittered exponential backoff,
//! instead of getting the message back at once and looping.

use crate::dead_letter_retry::{DEAD_LETTER_RETRY_MAX_DELAY, dead_letter_retry_delays};
use crate::delivery::{DeadLetter, Delivery};

use super::shared::Shared;

/// How publishing the copy ended.
pub(crate) enum CopyOutcome {
    /// The broker took the copy: remove the original.
    Published,
    /// The adapter dead-letters only through `nack`.
    Unsupported,
    /// The shutdown deadline passed first: give the original back.
    Aborted,
}

/// Publishes the dead-letter copy of `delivery`, again after each failure
/// (each failure is logged and counted in
/// [`ConsumerStats::dead_letter_failures`](super::ConsumerStats::dead_letter_failures)),
/// until it is taken or the shutdown deadline passes.
pub(crate) async fn publish_copy(
    shared: &Shared,
    delivery: &Delivery,
    dead_letter: &DeadLetter,
) -> CopyOutcome {
    let counters = &shared.counters;
    let mut delays = dead_letter_retry_delays();
    let mut failures = 0u32;
    loop {
        let error = match delivery.publish_dead_letter(dead_letter).await {
            None => return CopyOutcome::Unsupported,
            Some(Ok(())) => return CopyOutcome::Published,
            Some(Err(error)) => error,
        };
        failures += 1;
        counters.add(&counters.dead_letter_failures);
        let delay = delays.next().unwrap_or(DEAD_LETTER_RETRY_MAX_DELAY);
        tracing::warn!(
            topic = %shared.topic, id = %delivery.message().id(), failures, ?delay, %error,
            "publishing the dead-letter copy failed; the message is held and the copy published again"
        );
        tokio::select! {
            biased;
            () = shared.abort.cancelled() => return CopyOutcome::Aborted,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
