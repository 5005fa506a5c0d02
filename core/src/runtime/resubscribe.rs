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

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::adapter::backoff::Backoff;
use crate::delivery::Delivery;
use crate::error::{Error, Result};
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

/// `first`, and after it ends or fails, a new subscription each time.
///
/// A stream of its own rather than `futures::stream::unfold`: an unfold
/// moves its state through a new future for every item, a copy of a few
/// hundred bytes per delivery; this one polls the current stream in place
/// and allocates the resubscribing future only when a subscription is lost.
pub(crate) fn resubscribing(first: DeliveryStream, how: Resubscribe) -> DeliveryStream {
    Box::pin(Resubscribing {
        current: Some(first),
        how: Arc::new(how),
        subscribing: None,
        ended: false,
    })
}

struct Resubscribing {
    current: Option<DeliveryStream>,
    how: Arc<Resubscribe>,
    /// Subscribing again, after `current` was lost.
    subscribing: Option<BoxFuture<'static, Option<DeliveryStream>>>,
    /// The consumer stopped or the subscriber was closed: nothing more.
    ended: bool,
}

impl Stream for Resubscribing {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(stream) = this.current.as_mut() {
                let how = &this.how;
                match ready!(stream.poll_next_unpin(cx)) {
                    Some(Ok(delivery)) => return Poll::Ready(Some(Ok(delivery))),
                    Some(Err(error @ Error::Closed(_))) => {
                        this.current = None;
                        return Poll::Ready(Some(Err(error)));
                    }
                    Some(Err(error)) => {
                        tracing::warn!(
                            topic = how.subscription.topic(),
                            group = how.subscription.group(),
                            %error,
                            "the subscription failed; subscribing again"
                        );
                    }
                    None => {
                        tracing::warn!(
                            topic = how.subscription.topic(),
                            group = how.subscription.group(),
                            "the subscription ended; subscribing again"
                        );
                    }
                }
                this.current = None;
            }
            if this.ended {
                return Poll::Ready(None);
            }
            let subscribing = match &mut this.subscribing {
                Some(subscribing) => subscribing,
                None => {
                    if this.how.stop.is_cancelled() {
                        this.ended = true;
                        return Poll::Ready(None);
                    }
                    this.subscribing
                        .insert(Box::pin(subscribe_again(this.how.clone())))
                }
            };
            let next = ready!(subscribing.as_mut().poll(cx));
            this.subscribing = None;
            match next {
                Some(stream) => this.current = Some(stream),
                None => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// Subscribes until it works; `None` once the consumer is stopped or the
/// subscriber closed.
async fn subscribe_again(how: Arc<Resubscribe>) -> Option<DeliveryStream> {
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
