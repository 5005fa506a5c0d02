//! Fault cases: a broker that stops answering without closing its
//! connections (a network black hole, a frozen VM; here `docker pause`).
//!
//! Every operation must come back within the bound the adapter documents
//! (the server's URL sets short timeouts, see
//! [`Adapter::with_freeze`](crate::Adapter::with_freeze)): an operation
//! that needs the broker fails with [`Error::Timeout`] naming itself, one
//! that does not (a Kafka ack, which only marks an offset) succeeds. Once
//! the broker answers again, the same handle publishes and consumes without
//! the caller doing anything.
//!
//! A case fails as hung when an operation takes more than twice the bound
//! plus [`HANG_MARGIN`]: generous, so that a slow machine does not fail it,
//! and still far below what an unbounded wait takes. Each case prints the
//! times it measured next to the bound.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use courier_core::{Broker, Error, Message, MessageId, Result, Subscription};

use crate::harness::{Capability, Case, Ctx};

/// Added to twice the bound before an operation counts as hung.
pub const HANG_MARGIN: Duration = Duration::from_secs(5);

macro_rules! case {
    ($name:ident) => {
        Case::new(stringify!($name), &[Capability::Freeze], |ctx| {
            Box::pin($name(ctx))
        })
    };
    ($name:ident, needs $($need:ident),+) => {
        Case::new(stringify!($name), &[$(Capability::$need),+], |ctx| {
            Box::pin($name(ctx))
        })
    };
}

/// Every fault case.
pub fn cases() -> Vec<Case> {
    vec![
        case!(fault_frozen_broker_times_out_publish),
        case!(fault_frozen_broker_times_out_provision_and_subscribe),
        case!(fault_frozen_broker_ack_and_close_come_back_in_time),
        case!(fault_thawed_broker_serves_the_same_handle_again, needs Freeze, ThawRecovery),
    ]
}

/// Runs `operation` against a frozen broker: fails the case when it hangs,
/// prints how long it took next to the bound.
async fn timed<T>(ctx: &Ctx, what: &str, operation: impl Future<Output = Result<T>>) -> Result<T> {
    let bound = ctx.fault_bound();
    let limit = bound * 2 + HANG_MARGIN;
    let started = Instant::now();
    let outcome = tokio::time::timeout(limit, operation).await;
    let took = started.elapsed();
    let Ok(outcome) = outcome else {
        panic!("{what} hung: no answer within {limit:?} (bound {bound:?})");
    };
    let shown = match &outcome {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    eprintln!("fault: {what}: {took:.2?} (bound {bound:?}): {shown}");
    outcome
}

/// Asserts that `outcome` is the typed timeout of a bounded operation.
#[track_caller]
fn assert_timed_out<T>(what: &str, outcome: Result<T>) {
    match outcome {
        Err(Error::Timeout { .. }) => {}
        Err(other) => panic!("{what}: expected Error::Timeout, got {other} ({other:?})"),
        Ok(_) => panic!("{what}: succeeded against a frozen broker"),
    }
}

/// Asserts that `outcome` is a success or the typed timeout: for
/// operations an adapter may complete without the broker.
#[track_caller]
fn assert_ok_or_timed_out<T>(what: &str, outcome: Result<T>) {
    match outcome {
        Ok(_) | Err(Error::Timeout { .. }) => {}
        Err(other) => panic!("{what}: expected Ok or Error::Timeout, got {other} ({other:?})"),
    }
}

/// Retries `attempt` until it succeeds, failing the case after the
/// adapter's patience (twice: reconnecting follows the thaw).
async fn until_ok<T, F, Fut>(ctx: &Ctx, what: &str, mut attempt: F) -> (T, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + ctx.patience() * 2;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(value) => return (value, attempts),
            Err(e) if Instant::now() < deadline => {
                eprintln!("fault: {what} after the thaw, attempt {attempts}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what} never recovered after the thaw: {e} ({e:?})"),
        }
    }
}

/// Receives until every id in `expected` has arrived; returns every id
/// received (which may hold others, e.g. a publish that timed out but was
/// stored).
async fn receive_all(
    ctx: &Ctx,
    broker: &Broker,
    sub: &Subscription,
    expected: &[MessageId],
) -> HashSet<MessageId> {
    let mut stream = broker.subscribe(sub.clone()).await.expect("subscribe");
    let mut seen = HashSet::new();
    while !expected.iter().all(|id| seen.contains(id)) {
        let delivery = ctx.next(&mut stream).await;
        seen.insert(delivery.message().id().clone());
        delivery.ack().await.expect("ack");
    }
    seen
}

async fn fault_frozen_broker_times_out_publish(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    broker.provision(&sub).await.expect("provision");
    broker
        .publish(sub.topic(), Message::new("before"))
        .await
        .expect("publish before");

    ctx.freeze_broker().await;
    let single = timed(
        &ctx,
        "publish",
        broker.publish(sub.topic(), Message::new("one")),
    )
    .await;
    let batch = (0..10)
        .map(|n| Message::new(format!("batch {n}")))
        .collect();
    let batch = timed(
        &ctx,
        "publish_batch",
        broker.publish_batch(sub.topic(), batch),
    )
    .await;
    let closed = timed(&ctx, "close", broker.close()).await;
    ctx.thaw_broker().await;
    assert_timed_out("publish", single);
    assert_timed_out("publish_batch", batch);
    assert_ok_or_timed_out("close", closed);
}

async fn fault_frozen_broker_times_out_provision_and_subscribe(ctx: Ctx) {
    let broker = ctx.broker().await;
    // The topic exists before the freeze: the case is about the group.
    let warm = Subscription::new(ctx.name("t"), ctx.name("warm"));
    broker.provision(&warm).await.expect("provision");
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));

    ctx.freeze_broker().await;
    let provisioned = timed(&ctx, "provision", broker.provision(&sub)).await;
    let subscribed = timed(&ctx, "subscribe", broker.subscribe(sub.clone())).await;
    // Lag has a bound of its own (DEFAULT_LAG_TIMEOUT), under the hang limit.
    let lag = timed(&ctx, "lag", broker.lag(warm.topic(), warm.group())).await;
    let closed = timed(&ctx, "close", broker.close()).await;
    ctx.thaw_broker().await;
    assert_timed_out("provision", provisioned);
    assert_timed_out("subscribe", subscribed.map(drop));
    assert_timed_out("lag", lag);
    assert_ok_or_timed_out("close", closed);
}

async fn fault_thawed_broker_serves_the_same_handle_again(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    broker.provision(&sub).await.expect("provision");
    let before = Message::new("before");
    let before_id = before.id().clone();
    broker
        .publish(sub.topic(), before)
        .await
        .expect("publish before");

    ctx.freeze_broker().await;
    let during = Message::new("during");
    let during_id = during.id().clone();
    let outcome = timed(&ctx, "publish", broker.publish(sub.topic(), during)).await;
    let late = Subscription::new(ctx.name("t"), ctx.name("late"));
    let provisioned = timed(&ctx, "provision", broker.provision(&late)).await;
    ctx.thaw_broker().await;
    assert_timed_out("publish", outcome);
    assert_timed_out("provision", provisioned);

    // The same handle, with nothing done to it.
    let (_, attempts) = until_ok(&ctx, "provision", || broker.provision(&late)).await;
    eprintln!("fault: provision recovered on attempt {attempts}");
    let after = Message::new("after");
    let after_id = after.id().clone();
    let (_, attempts) = until_ok(&ctx, "publish", || {
        broker.publish(sub.topic(), after.clone())
    })
    .await;
    eprintln!("fault: publish recovered on attempt {attempts}");
    let seen = receive_all(&ctx, &broker, &sub, &[before_id.clone(), after_id.clone()]).await;
    // The timed-out publish may have been stored or not; nothing else
    // arrives.
    let others: Vec<_> = seen
        .iter()
        .filter(|id| ![&before_id, &after_id, &during_id].contains(id))
        .collect();
    assert!(others.is_empty(), "unexpected messages {others:?}");
    eprintln!(
        "fault: the timed-out publish was {}",
        if seen.contains(&during_id) {
            "stored"
        } else {
            "not stored"
        }
    );
    let late_seen = receive_all(&ctx, &broker, &late, std::slice::from_ref(&after_id)).await;
    assert!(late_seen.contains(&after_id));
    broker.close().await.expect("close");
}

async fn fault_frozen_broker_ack_and_close_come_back_in_time(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    broker.provision(&sub).await.expect("provision");
    broker
        .publish(sub.topic(), Message::new("one"))
        .await
        .expect("publish");
    let mut stream = broker.subscribe(sub.clone()).await.expect("subscribe");
    let delivery = ctx.next(&mut stream).await;

    ctx.freeze_broker().await;
    // An ack that needs the broker times out; one that only marks an
    // offset (Kafka) succeeds. Either way it comes back.
    let acked = timed(&ctx, "ack", delivery.ack()).await;
    drop(stream);
    let closed = timed(&ctx, "close", broker.close()).await;
    ctx.thaw_broker().await;
    assert_ok_or_timed_out("ack", acked);
    assert_ok_or_timed_out("close", closed);
}
