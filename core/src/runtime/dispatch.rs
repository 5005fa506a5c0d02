//! The consumer's main loop: pull deliveries, route them to ordering lanes
//! or free tasks, and shut down in two phases.

use std::collections::VecDeque;
use std::sync::Arc;
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
    let stopped = shared.stop.clone().cancelled_owned();
    tokio::pin!(stopped);
    let mut stream = tokio::select! {
        biased;
        () = &mut stopped => return Ok(()),
        stream = subscriber.subscribe(subscription) => stream?,
    };
    let tasks = TaskTracker::new();
    let outcome = loop {
        let next = tokio::select! {
            biased;
            () = &mut stopped => break Ok(()),
            next = stream.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => break Err(error),
            None => break Ok(()),
        };
        Counters::add(&shared.counters.in_flight);
        if shared.ordered_by_key && delivery.message().key().is_some() {
            enqueue_in_lane(&shared, &tasks, delivery);
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
        let task_shared = shared.clone();
        tasks.spawn(async move {
            process(&task_shared, delivery, Some(permit)).await;
        });
    };
    // Phase 1: take nothing more. Dropping the stream gives back what it
    // holds; lanes give back what they had queued but not started.
    drop(stream);
    shared.stop.cancel();
    tasks.close();
    // Phase 2: let in-flight work finish and settle, up to the deadline;
    // then cancel it, which requeues it.
    if tokio::time::timeout(deadline, tasks.wait()).await.is_err() {
        shared.abort.cancel();
        tasks.wait().await;
    }
    outcome
}

/// Queues a keyed delivery behind its key's lane, starting the lane if the
/// key has none.
fn enqueue_in_lane(shared: &Arc<Shared>, tasks: &TaskTracker, delivery: Delivery) {
    let key = delivery.message().key().expect("keyed delivery");
    let mut lanes = shared.lock_lanes();
    if let Some(queue) = lanes.get_mut(key) {
        queue.push_back(delivery);
        return;
    }
    let key = key.to_owned();
    lanes.insert(key.clone(), VecDeque::new());
    drop(lanes);
    Counters::add(&shared.counters.lanes_active);
    let shared = shared.clone();
    tasks.spawn(async move { run_lane(shared, key, delivery).await });
}

/// Handles one key's deliveries one at a time, in arrival order (a retrying
/// delivery holds the lane), until the lane is empty or the shutdown starts.
async fn run_lane(shared: Arc<Shared>, key: String, first: Delivery) {
    let mut next = first;
    loop {
        if let Some(unstarted) = process(&shared, next, None).await {
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
