//! Fault cases: a broker that stops answering without closing its
//! connections (a network black hole, a frozen VM; here `docker pause`),
//! and a network that misbehaves between client and broker (a
//! [`FaultProxy`](crate::proxy::FaultProxy) of the case's own: black hole,
//! connection resets, latency, narrow bandwidth).
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
        case!(fault_black_hole_on_the_link_bounds_publish_and_heals, needs Proxy),
        case!(fault_saturated_link_bounds_publish_and_ack_and_heals, needs Proxy),
        case!(fault_connection_resets_lose_nothing_confirmed, needs Proxy),
        case!(fault_slow_narrow_link_delivers_everything_once, needs Proxy),
        case!(fault_subscription_keeps_delivering_across_resets, needs Proxy),
        case!(fault_hard_kill_loses_nothing_confirmed, needs Kill),
        case!(fault_runtime_keeps_consuming_across_a_long_outage, needs Proxy),
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
                eprintln!("fault: {what} after the fault, attempt {attempts}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what} never recovered after the fault: {e} ({e:?})"),
        }
    }
}

/// A provisioned group of a new topic, and the id of one message
/// published to it before any fault.
pub(crate) async fn provisioned_with_one(ctx: &Ctx, broker: &Broker) -> (Subscription, MessageId) {
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    broker.provision(&sub).await.expect("provision");
    let before = Message::new("before");
    let before_id = before.id().clone();
    broker
        .publish(sub.topic(), before)
        .await
        .expect("publish before");
    (sub, before_id)
}

/// After a fault healed: `broker`, untouched, provisions `late` and
/// publishes to `sub`'s topic again (retried within the patience); returns
/// the id of that publish.
async fn recovered(
    ctx: &Ctx,
    broker: &Broker,
    sub: &Subscription,
    late: &Subscription,
) -> MessageId {
    let (_, attempts) = until_ok(ctx, "provision", || broker.provision(late)).await;
    eprintln!("fault: provision recovered on attempt {attempts}");
    let after = Message::new("after");
    let (_, attempts) = until_ok(ctx, "publish", || {
        broker.publish(sub.topic(), after.clone())
    })
    .await;
    eprintln!("fault: publish recovered on attempt {attempts}");
    after.id().clone()
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
    let (sub, before_id) = provisioned_with_one(&ctx, &broker).await;

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
    let after_id = recovered(&ctx, &broker, &sub, &late).await;
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

async fn fault_black_hole_on_the_link_bounds_publish_and_heals(ctx: Ctx) {
    let (broker, proxy) = ctx.proxied_broker().await;
    let (sub, before_id) = provisioned_with_one(&ctx, &broker).await;

    proxy.black_hole();
    let during = Message::new("during");
    let during_id = during.id().clone();
    let published = timed(&ctx, "publish", broker.publish(sub.topic(), during)).await;
    let late = Subscription::new(ctx.name("t"), ctx.name("late"));
    let provisioned = timed(&ctx, "provision", broker.provision(&late)).await;
    proxy.heal();
    assert_timed_out("publish", published);
    assert_timed_out("provision", provisioned);

    // The same handle, with nothing done to it.
    let after_id = recovered(&ctx, &broker, &sub, &late).await;
    // Checked on a direct connection: the link's faults are not the
    // question here.
    let direct = ctx.broker().await;
    let seen = receive_all(&ctx, &direct, &sub, &[before_id.clone(), after_id.clone()]).await;
    let others: Vec<_> = seen
        .iter()
        .filter(|id| ![&before_id, &after_id, &during_id].contains(id))
        .collect();
    assert!(others.is_empty(), "unexpected messages {others:?}");
    broker.close().await.expect("close");
    direct.close().await.expect("close direct");
}

/// Publishes the saturated-link case sends into the black hole at once,
/// as (count, payload size): first 25 MiB, more than the socket buffers on
/// both sides of the proxy hold, then more small ones than a client's
/// command queue holds (async-nats: 2,048), which fill it behind them.
const SATURATING: [(usize, usize); 2] = [(400, 64 * 1024), (3_000, 16)];

async fn fault_saturated_link_bounds_publish_and_ack_and_heals(ctx: Ctx) {
    let (broker, proxy) = ctx.proxied_broker().await;
    let (sub, before_id) = provisioned_with_one(&ctx, &broker).await;
    let mut stream = broker.subscribe(sub.clone()).await.expect("subscribe");
    let delivery = ctx.next(&mut stream).await;
    assert_eq!(delivery.message().id(), &before_id);

    // The link reads nothing: what the flood sends fills the sockets, and
    // everything sent after it waits in the client behind the flood.
    proxy.black_hole();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count: usize = SATURATING.iter().map(|(count, _)| count).sum();
    let mut flood = tokio::task::JoinSet::new();
    for (n, size) in SATURATING {
        let payload = vec![0_u8; size];
        for _ in 0..n {
            let (broker, topic) = (broker.clone(), sub.topic().to_owned());
            let (started, payload) = (started.clone(), payload.clone());
            flood.spawn(async move {
                started.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                broker.publish(&topic, Message::new(payload)).await
            });
        }
    }
    let deadline = Instant::now() + ctx.patience();
    while started.load(std::sync::atomic::Ordering::Acquire) < count {
        assert!(
            Instant::now() < deadline,
            "the flood's publishes did not start"
        );
        tokio::task::yield_now().await;
    }

    // A topic never published to (its declaration goes behind the flood),
    // then a settlement.
    let fresh = ctx.name("fresh");
    let published = timed(&ctx, "publish", broker.publish(&fresh, Message::new("x"))).await;
    let acked = timed(&ctx, "ack", delivery.ack()).await;
    // Every publish of the flood comes back too, each within its bound.
    let mut flooded = (0, 0);
    let limit = ctx.fault_bound() * 2 + HANG_MARGIN;
    while let Some(outcome) = tokio::time::timeout(limit, flood.join_next())
        .await
        .unwrap_or_else(|_| panic!("a publish of the flood hung past {limit:?}"))
    {
        match outcome.expect("flood task") {
            Ok(()) => flooded.0 += 1,
            Err(Error::Timeout { .. }) => flooded.1 += 1,
            Err(other) => panic!("a flood publish: expected Ok or Error::Timeout, got {other}"),
        }
    }
    eprintln!(
        "fault: the flood of {count} publishes: {} ok, {} timed out",
        flooded.0, flooded.1
    );
    proxy.heal();
    assert_timed_out("publish", published);
    assert_ok_or_timed_out("ack", acked);

    // The same handle, with nothing done to it.
    let late = Subscription::new(ctx.name("t"), ctx.name("late"));
    recovered(&ctx, &broker, &sub, &late).await;
    drop(stream);
    broker.close().await.expect("close");
}

/// Messages the reset case publishes; a reset comes after each quarter.
const RESET_LOAD: usize = 200;

async fn fault_connection_resets_lose_nothing_confirmed(ctx: Ctx) {
    let (broker, proxy) = ctx.proxied_broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    broker.provision(&sub).await.expect("provision");

    // Four publishers share the handle; every message is published until
    // the broker confirms it (a retry after a reset may store it twice).
    let confirmed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut publishers = tokio::task::JoinSet::new();
    for publisher in 0..4 {
        let broker = broker.clone();
        let topic = sub.topic().to_owned();
        let confirmed = confirmed.clone();
        let ctx = ctx.clone();
        publishers.spawn(async move {
            let mut ids = Vec::new();
            let mut failures = 0;
            for n in 0..RESET_LOAD / 4 {
                let message = Message::new(format!("{publisher}-{n}"));
                let (_, attempts) =
                    until_ok(&ctx, "publish", || broker.publish(&topic, message.clone())).await;
                failures += attempts - 1;
                ids.push(message.id().clone());
                confirmed.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            (ids, failures)
        });
    }
    // Resets at a quarter, a half and three quarters of the load.
    let mut resets = Vec::new();
    for quarter in 1..4 {
        let deadline = Instant::now() + ctx.patience() * 2;
        while confirmed.load(std::sync::atomic::Ordering::Acquire) < RESET_LOAD * quarter / 4 {
            assert!(
                Instant::now() < deadline,
                "publishing stalled at {} confirmed before reset {quarter}",
                confirmed.load(std::sync::atomic::Ordering::Acquire)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        resets.push(proxy.reset_all());
    }
    let mut expected = Vec::new();
    let mut failures = 0;
    while let Some(outcome) = publishers.join_next().await {
        let (ids, failed) = outcome.expect("publisher");
        expected.extend(ids);
        failures += failed;
    }
    assert_eq!(expected.len(), RESET_LOAD);
    assert!(
        resets.iter().all(|&open| open > 0),
        "a reset found no open connection to close ({resets:?}): the broker is not behind the proxy"
    );

    // Everything confirmed is there, read on a direct connection.
    let direct = ctx.broker().await;
    let mut stream = direct.subscribe(sub.clone()).await.expect("subscribe");
    let mut counts: std::collections::HashMap<MessageId, usize> = std::collections::HashMap::new();
    while !expected.iter().all(|id| counts.contains_key(id)) {
        let delivery = ctx.next(&mut stream).await;
        *counts.entry(delivery.message().id().clone()).or_default() += 1;
        delivery.ack().await.expect("ack");
    }
    // Late duplicates still on their way are counted too.
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(ctx.quiet(), futures::StreamExt::next(&mut stream)).await
    {
        *counts.entry(delivery.message().id().clone()).or_default() += 1;
        delivery.ack().await.expect("ack");
    }
    let unknown: Vec<_> = counts.keys().filter(|id| !expected.contains(id)).collect();
    assert!(unknown.is_empty(), "messages nobody published: {unknown:?}");
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "fault: {RESET_LOAD} confirmed through 3 resets (connections reset: {resets:?}), \
         {failures} publish attempts failed and were retried; 0 lost, {duplicates} duplicates"
    );
    drop(stream);
    broker.close().await.expect("close");
    direct.close().await.expect("close direct");
}

/// Messages and their size for the slow-link case: 240 KiB in all.
const SLOW_LINK_MESSAGES: usize = 30;
const SLOW_LINK_PAYLOAD: usize = 8 * 1024;

async fn fault_slow_narrow_link_delivers_everything_once(ctx: Ctx) {
    let (broker, proxy) = ctx.proxied_broker().await;
    proxy.set_latency(Duration::from_millis(20));
    proxy.set_bandwidth(Some(256 * 1024));
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    broker.provision(&sub).await.expect("provision");
    let mut stream = broker.subscribe(sub.clone()).await.expect("subscribe");
    let started = Instant::now();
    let mut expected = Vec::new();
    for n in 0..SLOW_LINK_MESSAGES {
        let mut payload = vec![b'x'; SLOW_LINK_PAYLOAD];
        payload[..8].copy_from_slice(&(n as u64).to_be_bytes());
        let message = Message::new(payload);
        expected.push(message.id().clone());
        broker
            .publish(sub.topic(), message)
            .await
            .unwrap_or_else(|e| panic!("publish {n} over the slow link: {e} ({e:?})"));
    }
    let published = started.elapsed();
    let mut received = Vec::new();
    while received.len() < SLOW_LINK_MESSAGES {
        let delivery = ctx.next(&mut stream).await;
        assert_eq!(delivery.message().payload().len(), SLOW_LINK_PAYLOAD);
        received.push(delivery.message().id().clone());
        delivery.ack().await.expect("ack over the slow link");
    }
    // One publisher, one consumer, nothing redelivered: publish order.
    assert_eq!(received, expected);
    ctx.expect_nothing(&mut stream).await;
    let forwarded = proxy.forwarded_bytes();
    assert!(
        forwarded >= 2 * (SLOW_LINK_MESSAGES * SLOW_LINK_PAYLOAD) as u64,
        "only {forwarded} bytes went through the proxy: the broker is not behind it"
    );
    eprintln!(
        "fault: {SLOW_LINK_MESSAGES} x {SLOW_LINK_PAYLOAD} B over 20 ms each way and 256 KiB/s: \
         published in {published:.2?}, all received once in order after {:.2?}",
        started.elapsed()
    );
    drop(stream);
    broker.close().await.expect("close");
}

/// Messages the resubscribe case consumes; a reset comes after each
/// quarter.
const RESUBSCRIBE_LOAD: usize = 100;

async fn fault_subscription_keeps_delivering_across_resets(ctx: Ctx) {
    let direct = ctx.broker().await;
    let (broker, proxy) = ctx.proxied_broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g")).prefetch(10);
    broker.provision(&sub).await.expect("provision");
    let mut expected = Vec::new();
    for n in 0..RESUBSCRIBE_LOAD {
        let message = Message::new(format!("{n}"));
        expected.push(message.id().clone());
        direct
            .publish(sub.topic(), message)
            .await
            .expect("publish on the direct connection");
    }
    // One stream, through three resets of its connection: the adapter
    // reconnects and resubscribes behind it; unsettled deliveries come
    // back (duplicates), nothing is lost and the stream does not end.
    let mut stream = broker.subscribe(sub.clone()).await.expect("subscribe");
    let mut counts: std::collections::HashMap<MessageId, usize> = std::collections::HashMap::new();
    let mut resets = Vec::new();
    let mut failed_acks = 0;
    while !expected.iter().all(|id| counts.contains_key(id)) {
        let delivery = ctx.next(&mut stream).await;
        *counts.entry(delivery.message().id().clone()).or_default() += 1;
        if delivery.ack().await.is_err() {
            // Its connection went; the message comes back.
            failed_acks += 1;
        }
        if resets.len() < 3 && counts.len() >= RESUBSCRIBE_LOAD * (resets.len() + 1) / 4 {
            resets.push(proxy.reset_all());
        }
    }
    assert!(
        resets.iter().all(|&open| open > 0),
        "a reset found no open connection to close ({resets:?}): the broker is not behind the proxy"
    );
    let unknown: Vec<_> = counts.keys().filter(|id| !expected.contains(id)).collect();
    assert!(unknown.is_empty(), "messages nobody published: {unknown:?}");
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "fault: one stream through 3 resets (connections reset: {resets:?}): all {RESUBSCRIBE_LOAD} \
         received, {duplicates} duplicates, {failed_acks} acks failed with their connection"
    );
    drop(stream);
    broker.close().await.expect("close");
    direct.close().await.expect("close direct");
}

/// How old the younger group is when the broker is killed: past the
/// moment a just-declared RabbitMQ quorum queue can still be lost whole
/// (see the AMQP adapter's docs), as a service that declares its queue at
/// start and crashes seconds later.
const YOUNG_GROUP_AGE: Duration = Duration::from_secs(3);

async fn fault_hard_kill_loses_nothing_confirmed(ctx: Ctx) {
    let broker = ctx.broker().await;
    let topic = ctx.name("t");
    let old = Subscription::new(&topic, ctx.name("old"));
    broker
        .provision(&old)
        .await
        .expect("provision the older group");

    // One publisher, keeping every id the broker confirmed; it goes on
    // through the kill (publishes then fail) and after the start.
    let confirmed = std::sync::Arc::new(confirmations::Confirmed::default());
    let publisher = {
        let (broker, topic, confirmed) = (broker.clone(), topic.clone(), confirmed.clone());
        tokio::spawn(async move {
            let mut failed = 0_usize;
            let mut n = 0_usize;
            while !confirmed.is_stopped() {
                let message = Message::new(format!("{n}"));
                n += 1;
                match broker.publish(&topic, message.clone()).await {
                    Ok(()) => confirmed.push(message.id().clone()),
                    Err(_) => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            failed
        })
    };
    confirmed
        .wait_for(&ctx, 100, "before the younger group")
        .await;
    let young = Subscription::new(&topic, ctx.name("young"));
    broker
        .provision(&young)
        .await
        .expect("provision the younger group");
    let young_since = Instant::now();
    let before_young = confirmed.len();
    tokio::time::sleep_until((young_since + YOUNG_GROUP_AGE).into()).await;
    confirmed
        .wait_for(&ctx, before_young + 100, "into the younger group")
        .await;

    let at_kill = confirmed.len();
    let young_age = young_since.elapsed();
    ctx.kill_and_start_broker().await;
    let after_start = confirmed.len();
    confirmed
        .wait_for(&ctx, after_start + 50, "after the start")
        .await;
    confirmed.stop();
    let failed = publisher.await.expect("publisher");
    let expected = confirmed.ids();

    // Every confirmed message, in both groups, read on a new connection.
    let reader = ctx.broker().await;
    for sub in [&old, &young] {
        let wanted: Vec<MessageId> = if sub == &young {
            expected[before_young..].to_vec()
        } else {
            expected.clone()
        };
        let seen = receive_all(&ctx, &reader, sub, &wanted).await;
        eprintln!(
            "fault: hard kill, group {}: {} confirmed ({at_kill} before the kill, the younger group \
             {young_age:.1?} old), all received ({} distinct ids received), 0 lost; {failed} publishes failed \
             during the outage",
            sub.group(),
            wanted.len(),
            seen.len()
        );
    }
    broker.close().await.expect("close");
    reader.close().await.expect("close reader");
}

/// The ids a publisher has had confirmed, shared with the case.
mod confirmations {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use courier_core::MessageId;

    use crate::harness::Ctx;

    #[derive(Debug, Default)]
    pub(super) struct Confirmed {
        ids: Mutex<Vec<MessageId>>,
        stopped: AtomicBool,
    }

    impl Confirmed {
        pub(super) fn push(&self, id: MessageId) {
            self.ids.lock().expect("ids").push(id);
        }

        pub(super) fn len(&self) -> usize {
            self.ids.lock().expect("ids").len()
        }

        pub(super) fn ids(&self) -> Vec<MessageId> {
            self.ids.lock().expect("ids").clone()
        }

        pub(super) fn stop(&self) {
            self.stopped.store(true, Ordering::Release);
        }

        pub(super) fn is_stopped(&self) -> bool {
            self.stopped.load(Ordering::Acquire)
        }

        /// Waits until `count` publishes are confirmed, failing the case
        /// after four times the adapter's patience (a restart is in it).
        pub(super) async fn wait_for(&self, ctx: &Ctx, count: usize, what: &str) {
            let deadline = Instant::now() + ctx.patience() * 4;
            while self.len() < count {
                assert!(
                    Instant::now() < deadline,
                    "publishing stalled {what}: {} of {count} confirmed",
                    self.len()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// How long the link stays a black hole in the long-outage case: longer
/// than the reconnect budget the proxied URLs set (see
/// `tests/conformance.rs`), so an adapter that gives up does so.
const LONG_OUTAGE: Duration = Duration::from_secs(10);

async fn fault_runtime_keeps_consuming_across_a_long_outage(ctx: Ctx) {
    use courier_core::runtime::{self, Consumer};

    let direct = ctx.broker().await;
    let (broker, proxy) = ctx.proxied_broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    broker.provision(&sub).await.expect("provision");
    let seen: std::sync::Arc<std::sync::Mutex<HashSet<MessageId>>> = std::sync::Arc::default();
    let handler = {
        let seen = seen.clone();
        runtime::raw(move |message: Message| {
            seen.lock().expect("seen").insert(message.id().clone());
            async { Ok(()) }
        })
    };
    let running = Consumer::builder(&broker, sub.clone(), handler)
        .build()
        .start()
        .await
        .expect("start");
    let wait_for = |count: usize, what: &'static str| {
        let seen = seen.clone();
        let patience = ctx.patience() * 4;
        async move {
            let deadline = Instant::now() + patience;
            while seen.lock().expect("seen").len() < count {
                assert!(
                    Instant::now() < deadline,
                    "{what}: {} of {count} handled",
                    seen.lock().expect("seen").len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut expected = HashSet::new();
    for n in 0..20 {
        let message = Message::new(format!("before {n}"));
        expected.insert(message.id().clone());
        direct.publish(sub.topic(), message).await.expect("publish");
    }
    wait_for(20, "before the outage").await;

    // The consumer's connection goes, and every new one hangs.
    proxy.black_hole();
    let reset = proxy.reset_all();
    assert!(reset > 0, "the consumer is not behind the proxy");
    for n in 0..20 {
        let message = Message::new(format!("during {n}"));
        expected.insert(message.id().clone());
        direct.publish(sub.topic(), message).await.expect("publish");
    }
    tokio::time::sleep(LONG_OUTAGE).await;
    assert!(
        !running.is_finished(),
        "the consumer ended during the outage"
    );
    proxy.heal();
    wait_for(40, "after the outage").await;
    assert_eq!(*seen.lock().expect("seen"), expected);
    eprintln!(
        "fault: runtime across a {LONG_OUTAGE:?} outage: 40 of 40 handled, {} resubscribes",
        running.resubscribes()
    );
    running.shutdown().await.expect("a clean shutdown");
    broker.close().await.expect("close");
    direct.close().await.expect("close direct");
}
