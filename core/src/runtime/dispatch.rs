//! The consumer's main loop: pull deliveries, route them to ordering lanes
//! or free tasks, and shut down in two phases.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::task::TaskTracker;

use super::consumer::Shared;
use super::process::{process, requeue};
use super::stats::Counters;
use crate::delivery::Delivery;
use crate::error::Result;
use crate::pubsub::{Subscriber, Subscription};

/// Runs until the shutdown is triggered or the stream ends, then drains.
pub(crate) async fn run(
    shared: Arc<Shared>,
    subscriber: Arc<dyn Subscriber>,
    subscription: Subscription,
    deadline: Duration,
) -> Result<()> {
    let stopped = shared.stop.token.clone().cancelled_owned();
    tokio::pin!(stopped);
    let mut stream = tokio::select! {
        biased;
        () = &mut stopped => return Ok(()),
        stream = subscriber.subscribe(subscription) => stream?,
    };
    // The deadline of phase 2 runs from the trigger, whatever the
    // dispatcher is doing then (with concurrency 1 it may be handling).
    let watchdog = tokio::spawn({
        let shared = shared.clone();
        async move {
            shared.stop.token.cancelled().await;
            tokio::time::sleep(deadline).await;
            shared.abort.cancel();
        }
    });
    let tasks = TaskTracker::new();
    let outcome = loop {
        if shared.stop.is_triggered() {
            break Ok(());
        }
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(next) = stream.poll_next_unpin(cx) {
                return Poll::Ready(Some(next));
            }
            if stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let delivery = match next {
            None => break Ok(()),
            Some(Some(Ok(delivery))) => delivery,
            Some(Some(Err(error))) => break Err(error),
            Some(None) => break Ok(()),
        };
        Counters::add(&shared.counters.in_flight);
        if !shared.serial && shared.ordered_by_key && delivery.message().key().is_some() {
            if let Some(lane) = enqueue_in_lane(&shared, delivery) {
                start(&tasks, lane).await;
            }
            continue;
        }
        if shared.serial {
            // One at a time, in arrival order: no task, no lanes, no slots.
            process(&*shared, delivery, None).await;
            continue;
        }
        // Unkeyed deliveries start in the order they arrived: the slot is
        // taken here, before the task exists.
        let permit = match shared.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                biased;
                permit = shared.slots.clone().acquire_owned() => permit.expect("slots are never closed"),
                () = &mut stopped => {
                    requeue(&shared, [delivery]).await;
                    break Ok(());
                }
            },
        };
        start(&tasks, process(shared.clone(), delivery, Some(permit))).await;
    };
    // Phase 1: take nothing more. Dropping the stream gives back what it
    // holds; lanes give back what they had queued but not started.
    drop(stream);
    shared.stop.trigger();
    tasks.close();
    // Phase 2: in-flight work finishes and settles; the watchdog cancels
    // what is left at the deadline, which requeues it.
    tasks.wait().await;
    watchdog.abort();
    outcome
}

/// Runs `job` on the dispatcher's task until it first waits, and moves it
/// to a task of its own only then.
///
/// Most handler attempts of a busy consumer either finish at once or wait
/// for I/O early; running the first stretch here saves a task spawn and a
/// cross-thread wake-up per message, which is most of the runtime's cost
/// over a bare receive loop. The price: a handler that computes for long
/// before its first wait holds up dispatching meanwhile (such work belongs
/// in `spawn_blocking` anyway).
async fn start<O: Send + 'static>(
    tasks: &TaskTracker,
    job: impl Future<Output = O> + Send + 'static,
) {
    let mut job = Box::pin(job);
    let finished = std::future::poll_fn(|cx| Poll::Ready(job.as_mut().poll(cx).is_ready())).await;
    if !finished {
        tasks.spawn(job);
    }
}

/// Queues a keyed delivery behind its key's lane; if the key has no lane,
/// returns the lane to start.
fn enqueue_in_lane(
    shared: &Arc<Shared>,
    delivery: Delivery,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let key = delivery.message().key().expect("keyed delivery");
    let mut lanes = shared.lock_lanes();
    if let Some(queue) = lanes.get_mut(key) {
        queue.push_back(delivery);
        return None;
    }
    let key = key.to_owned();
    lanes.insert(key.clone(), VecDeque::new());
    drop(lanes);
    Counters::add(&shared.counters.lanes_active);
    Some(run_lane(shared.clone(), key, delivery))
}

/// Handles one key's deliveries one at a time, in arrival order (a retrying
/// delivery holds the lane), until the lane is empty or the shutdown starts.
async fn run_lane(shared: Arc<Shared>, key: String, first: Delivery) {
    let mut next = first;
    loop {
        if let Some(unstarted) = process(&*shared, next, None).await {
            // Shutdown: give back this delivery and the ones behind it. The
            // last is nacked first, so brokers that requeue at the head of
            // the queue (the in-process one) keep the key's order.
            let mut rest = shared.lock_lanes().remove(&key).unwrap_or_default();
            Counters::sub(&shared.counters.lanes_active);
            rest.push_front(unstarted);
            requeue(&shared, rest.into_iter().rev()).await;
            return;
        }
        let mut lanes = shared.lock_lanes();
        match lanes.get_mut(&key).and_then(VecDeque::pop_front) {
            Some(delivery) => next = delivery,
            None => {
                lanes.remove(&key);
                Counters::sub(&shared.counters.lanes_active);
                return;
            }
        }
    }
}
