//! The consumer's main loop: pull deliveries, route them to ordering lanes
//! or free tasks, and shut down in two phases.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio_util::task::TaskTracker;

use super::handler::Handler;
use super::lanes::{LaneId, LaneTable};
use super::process::{process, requeue};
use super::shared::{Run, Running, Shared};
use crate::delivery::Delivery;
use crate::error::Result;
use crate::pubsub::DeliveryStream;

impl<H: Handler> Run for Running<H> {
    fn shared(&self) -> &Shared {
        &self.shared
    }

    fn dispatch(
        self: Arc<Self>,
        stream: DeliveryStream,
        deadline: Duration,
    ) -> BoxFuture<'static, Result<()>> {
        Box::pin(run(self, stream, deadline))
    }
}

/// Runs until the shutdown is triggered or the stream ends, then drains.
pub(crate) async fn run<H: Handler>(
    shared: Arc<Running<H>>,
    mut stream: DeliveryStream,
    deadline: Duration,
) -> Result<()> {
    let stopped = shared.stop.token.clone().cancelled_owned();
    tokio::pin!(stopped);
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
    // Heap slots of jobs that finished on the dispatcher, for the next job.
    let mut spare_job = None;
    let mut spare_lane = None;
    // With concurrency 1, the one job's place, reused for every delivery.
    let mut serial_job = None;
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
        shared.counters.add(&shared.counters.in_flight);
        if !shared.serial
            && shared.ordered_by_key
            && let Some(key) = delivery.message().key()
        {
            let lane_id = shared.lane_ids.of(key);
            if let Some(mut lanes) = registered_lanes(&shared)
                && let Some(queue) = lanes.get_mut(&lane_id)
            {
                queue.push_back(delivery);
                continue;
            }
            start_lane(
                &shared,
                &tasks,
                &mut spare_lane,
                lane_id,
                delivery,
                run_lane,
            )
            .await;
            continue;
        }
        if shared.serial {
            // One at a time, in arrival order: no task, no lanes, no slots.
            // The job is made in its place on the heap: awaited directly,
            // the delivery was copied three times on its way into it.
            let job: &mut Slot<_> = serial_job.get_or_insert_with(|| Box::pin(None));
            job.set(Some(process(&*shared, delivery, None)));
            std::future::poll_fn(|cx| poll_slot(job, cx)).await;
            continue;
        }
        // Unkeyed deliveries start in the order they arrived: the slot is
        // taken here, before the task exists.
        let permit = match shared.slots.try_take() {
            Some(permit) => permit,
            None => tokio::select! {
                biased;
                permit = shared.slots.take() => permit,
                () = &mut stopped => {
                    requeue(&shared, [delivery]).await;
                    break Ok(());
                }
            },
        };
        start(&tasks, &mut spare_job, || {
            process(shared.clone(), delivery, Some(permit))
        })
        .await;
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

/// A job's place on the heap, kept for the next job once its job is done.
type Slot<F> = Pin<Box<Option<F>>>;

/// Runs `job` on the dispatcher's task until it first waits, and moves it
/// to a task of its own only then.
///
/// Most handler attempts of a busy consumer either finish at once or wait
/// for I/O early; running the first stretch here saves a task spawn and a
/// cross-thread wake-up per message, which is most of the runtime's cost
/// over a bare receive loop. The price: a handler that computes for long
/// before its first wait holds up dispatching meanwhile (such work belongs
/// in `spawn_blocking` anyway).
///
/// The job goes to the heap before anything else, so it is copied once:
/// `job` makes it right where it is put in the box (a job passed by value
/// was copied twice, and it is the largest thing moved per message), and
/// the returned future holds only the box. The box is `spare`, the slot
/// of an earlier job that finished on the dispatcher, when there is one:
/// jobs that finish at once then allocate nothing.
fn start<'a, F>(
    tasks: &'a TaskTracker,
    spare: &'a mut Option<Slot<F>>,
    job: impl FnOnce() -> F,
) -> impl Future<Output = ()> + 'a
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    let mut slot = spare.take().unwrap_or_else(|| Box::pin(None));
    slot.set(Some(job()));
    async move {
        if poll_once(&mut slot).await {
            *spare = Some(slot);
        } else {
            tasks.spawn(async move {
                std::future::poll_fn(|cx| poll_slot(&mut slot, cx)).await;
            });
        }
    }
}

/// Polls the slot's job once; whether it finished (and left the slot empty).
async fn poll_once<F: Future>(slot: &mut Slot<F>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(poll_slot(slot, cx).is_ready())).await
}

/// Polls the slot's job; empties the slot when the job is done.
fn poll_slot<F: Future>(slot: &mut Slot<F>, cx: &mut Context<'_>) -> Poll<()> {
    let Some(job) = slot.as_mut().as_pin_mut() else {
        return Poll::Ready(());
    };
    if job.poll(cx).is_pending() {
        return Poll::Pending;
    }
    slot.set(None);
    Poll::Ready(())
}

/// The lane table, locked, unless no lane is registered (then no lock is
/// taken). Only the dispatcher registers lanes, and the lane gauge is set
/// under the lock after every change: when the dispatcher reads 0 there,
/// the table is empty and stays so until it registers one itself.
fn registered_lanes(shared: &Shared) -> Option<MutexGuard<'_, LaneTable>> {
    if shared.counters.lanes_active.load(Ordering::Acquire) == 0 {
        return None;
    }
    Some(shared.lock_lanes())
}

/// Starts a lane for a keyed delivery whose key has none.
///
/// A new lane runs on the dispatcher first, like any job (in `spare`, the
/// slot of an earlier lane that finished there, if any). Only if it waits
/// is it registered (before it is spawned, so nothing else can run it
/// meanwhile): later deliveries of its key then queue behind it. A lane
/// whose message finishes at once is never registered at all.
///
/// The job is built before the returned future, so the delivery is moved
/// straight into it (it is large; every move is a copy).
///
/// `lane` makes the lane's job ([`run_lane`]; a parameter so that the
/// spare slot's type can be named).
fn start_lane<'a, F, L, H>(
    shared: &'a Arc<Running<H>>,
    tasks: &'a TaskTracker,
    spare: &'a mut Option<Slot<F>>,
    lane_id: LaneId,
    delivery: Delivery,
    lane: L,
) -> impl Future<Output = ()> + 'a
where
    F: Future<Output = ()> + Send + 'static,
    L: FnOnce(Arc<Running<H>>, LaneId, Delivery) -> F,
{
    let mut slot = spare.take().unwrap_or_else(|| Box::pin(None));
    slot.set(Some(lane(shared.clone(), lane_id, delivery)));
    async move {
        if poll_once(&mut slot).await {
            *spare = Some(slot);
            return;
        }
        let mut lanes = shared.lock_lanes();
        lanes.insert(lane_id, VecDeque::new());
        shared.counters.set_lanes(lanes.len());
        drop(lanes);
        tasks.spawn(async move {
            std::future::poll_fn(|cx| poll_slot(&mut slot, cx)).await;
        });
    }
}

/// Removes a key's lane, returning what was queued in it.
fn take_lane(shared: &Shared, lane_id: LaneId) -> Option<VecDeque<Delivery>> {
    let mut lanes = shared.lock_lanes();
    let queue = lanes.remove(&lane_id);
    shared.counters.set_lanes(lanes.len());
    queue
}

/// Handles one key's deliveries one at a time, in arrival order (a retrying
/// delivery holds the lane), until the lane is empty or the shutdown starts.
///
/// An `async` block, not an `async fn`, as `process`: the delivery is held
/// once, not copied from the arguments into the body.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice"
)]
fn run_lane<H: Handler>(
    shared: Arc<Running<H>>,
    lane_id: LaneId,
    mut next: Delivery,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        loop {
            if let Some(unstarted) = process(&*shared, next, None).await {
                // Shutdown: give back this delivery and the ones behind it. The
                // last is nacked first, so brokers that requeue at the head of
                // the queue (the in-process one) keep the key's order.
                let mut rest = take_lane(&shared, lane_id).unwrap_or_default();
                rest.push_front(*unstarted);
                requeue(&shared, rest.into_iter().rev()).await;
                // Registered while the requeue waited? The dispatcher stops
                // with the trigger, so that lane holds nothing or next to it.
                if let Some(late) = take_lane(&shared, lane_id) {
                    requeue(&shared, late.into_iter().rev()).await;
                }
                return;
            }
            // Never registered: finished on the dispatcher.
            let Some(mut lanes) = registered_lanes(&shared) else {
                return;
            };
            let Some(queue) = lanes.get_mut(&lane_id) else {
                return;
            };
            match queue.pop_front() {
                Some(delivery) => next = delivery,
                None => {
                    lanes.remove(&lane_id);
                    shared.counters.set_lanes(lanes.len());
                    return;
                }
            }
        }
    }
}
