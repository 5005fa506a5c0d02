//! Keeps a consumer subscribed through an outage longer than its adapter's
//! own reconnect budget.
//!
//! An adapter reconnects by itself for a while (RabbitMQ: two minutes by
//! default) and then gives up: its stream yields the error and ends. The
//! consumer does not end with it. It drops the stream (whatever it had
//! handed out and not settled comes back to the group), waits with a
//! jittered exponential backoff ([`Backoff`]: [`RESUBSCRIBE_MIN_DELAY`]
//! doubling up to [`RESUBSCRIBE_MAX_DELAY`], so that many consumers do not come back in
//! lockstep) and subscribes again, until that works or the consumer is shut
//! down. Every lost stream and every failed attempt is logged as a
//! `tracing` warning with the topic, group and error, every success as an
//! info event; [`RunningConsumer::resubscribes`](super::RunningConsumer::resubscribes)
//! counts the successes.
//!
//! A subscriber that was closed ([`Error::Closed`]) is final: the consumer
//! ends as it did before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::adapter::backoff::Backoff;
use crate::error::Error;
use crate::pubsub::{DeliveryStream, Subscriber, Subscription};

/// The first wait before subscribing again.
pub const RESUBSCRIBE_MIN_DELAY: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
pub const RESUBSCRIBE_MAX_DELAY: Duration = Duration::from_secs(30);

/// What the resubscribing stream needs.
pub(crate) struct Resubscribe {
    pub(crate) subscriber: Arc<dyn Subscriber>,
    pub(crate) subscription: Subscription,
    pub(crate) stop: CancellationToken,
    pub(crate) resubscribes: Arc<AtomicU64>,
}

struct State {
    current: Option<DeliveryStream>,
    how: Resubscribe,
}

/// `first`, and after it ends or fails, a new subscription each time.
pub(crate) fn resubscribing(first: DeliveryStream, how: Resubscribe) -> DeliveryStream {
    let state = State {
        current: Some(first),
        how,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(stream) = state.current.as_mut() {
                match stream.next().await {
                    Some(Ok(delivery)) => return Some((Ok(delivery), state)),
                    Some(Err(error @ Error::Closed(_))) => {
                        state.current = None;
                        return Some((Err(error), state));
                    }
                    Some(Err(error)) => {
                        tracing::warn!(
                            topic = state.how.subscription.topic(),
                            group = state.how.subscription.group(),
                            %error,
                            "the subscription failed; subscribing again"
                        );
                    }
                    None => {
                        tracing::warn!(
                            topic = state.how.subscription.topic(),
                            group = state.how.subscription.group(),
                            "the subscription ended; subscribing again"
                        );
                    }
                }
                state.current = None;
            }
            if state.how.stop.is_cancelled() {
                return None;
            }
            state.current = Some(subscribe_again(&state.how).await?);
        }
    })
    .boxed()
}

/// Subscribes until it works; `None` once the consumer is stopped or the
/// subscriber closed.
async fn subscribe_again(how: &Resubscribe) -> Option<DeliveryStream> {
    let mut delays = Backoff::new(RESUBSCRIBE_MIN_DELAY, RESUBSCRIBE_MAX_DELAY).delays();
    for attempt in 1_u64.. {
        let delay = delays.next().unwrap_or(RESUBSCRIBE_MAX_DELAY);
        tokio::select! {
            () = how.stop.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        let outcome = tokio::select! {
            () = how.stop.cancelled() => return None,
            outcome = how.subscriber.subscribe(how.subscription.clone()) => outcome,
        };
        match outcome {
            Ok(stream) => {
                how.resubscribes.fetch_add(1, Ordering::AcqRel);
                tracing::info!(
                    topic = how.subscription.topic(),
                    group = how.subscription.group(),
                    attempt,
                    "subscribed again"
                );
                return Some(stream);
            }
            Err(Error::Closed(_)) => return None,
            Err(error) => tracing::warn!(
                topic = how.subscription.topic(),
                group = how.subscription.group(),
                attempt,
                %error,
                "subscribing again failed; trying later"
            ),
        }
    }
    None
}
