//! Request/reply under faults: a requester whose connections are reset, a
//! link that turns into a black hole and heals, a broker that restarts.
//!
//! The requester keeps its handle throughout; the responder runs on a
//! connection of its own (reaching the server directly where a
//! [`FaultProxy`](crate::proxy::FaultProxy) sits in front of the
//! requester). Every request returns a reply or a typed
//! [`RequestError`] within its timeout plus a margin (a case fails as hung
//! otherwise), every reply carries its own request's value (never
//! another's), and once the fault is over the same handle is answered
//! again: one request within the patience, then a concurrent batch in
//! full. Each case prints what it saw: answered, typed errors, attempts.
//!
//! Replies are at most once on every broker but Kafka: a reply sent while
//! the requester's reply path was gone is lost, and its request times out.
//! So the pass conditions count answers only before and after the fault;
//! during it, a typed error is as good as an answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use courier_core::request::RequestError;
use courier_core::runtime::{self, Consumer, Envelope};
use courier_core::{Broker, Message, Subscription};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::fault_cases::HANG_MARGIN;
use crate::harness::{Capability, Case, Ctx};
use crate::runtime_cases::Running;

macro_rules! case {
    ($name:ident, needs $($need:ident),+) => {
        Case::new(stringify!($name), &[$(Capability::$need),+], |ctx| {
            Box::pin($name(ctx))
        })
    };
}

/// Every request/reply fault case.
pub fn cases() -> Vec<Case> {
    vec![
        case!(request_survives_connection_resets, needs Proxy),
        case!(request_through_a_black_hole_times_out_then_recovers, needs Proxy),
        case!(request_survives_a_broker_restart, needs Restart),
    ]
}

/// Requests sent one after another before the fault, each answered.
const BEFORE: u32 = 10;
/// Requests sent at once after the fault, each answered.
const BATCH: u32 = 50;
/// Requests in flight at a time while the fault happens.
const DURING_CONCURRENCY: usize = 4;

/// A request's body; its reply echoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Value {
    phase: u32,
    n: u32,
}

impl Value {
    fn message(self) -> Message {
        Message::from_json(&self).expect("encode")
    }
}

/// What the requests of a case came to.
#[derive(Debug, Default)]
struct Tally {
    attempts: AtomicU32,
    answered: AtomicU32,
    typed_errors: AtomicU32,
    crossed: AtomicU32,
}

impl Tally {
    fn print(&self, ctx: &Ctx, case: &str, late: u64) {
        eprintln!(
            "request fault: {}::{case}: attempts {}, answered {}, typed errors {}, crossed {}, late replies {late}",
            ctx.adapter().name(),
            self.attempts.load(Ordering::SeqCst),
            self.answered.load(Ordering::SeqCst),
            self.typed_errors.load(Ordering::SeqCst),
            self.crossed.load(Ordering::SeqCst),
        );
    }
}

/// Sends `value` as a request with `timeout` and counts the outcome in
/// `tally`; fails the case when the request does not return within twice
/// its timeout plus [`HANG_MARGIN`], or when the reply is another
/// request's.
async fn ask(
    requester: &Broker,
    topic: &str,
    value: Value,
    timeout: Duration,
    tally: &Tally,
) -> Result<(), RequestError> {
    tally.attempts.fetch_add(1, Ordering::SeqCst);
    let limit = timeout * 2 + HANG_MARGIN;
    let outcome = tokio::time::timeout(limit, requester.request(topic, value.message(), timeout))
        .await
        .unwrap_or_else(|_| panic!("request {value:?} hung: no outcome within {limit:?}"));
    match outcome {
        Ok(reply) => {
            let echoed: Value = reply.json().expect("the reply decodes");
            if echoed != value {
                tally.crossed.fetch_add(1, Ordering::SeqCst);
                panic!("request {value:?} got the reply to {echoed:?}");
            }
            tally.answered.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        Err(e @ RequestError::Codec(_)) => panic!("request {value:?}: {e} ({e:?})"),
        Err(e) => {
            tally.typed_errors.fetch_add(1, Ordering::SeqCst);
            Err(e)
        }
    }
}

/// Sends requests of `phase` (with `timeout` each) until one is answered,
/// failing the case after `patience`; returns how many it took.
async fn until_answered(
    requester: &Broker,
    topic: &str,
    phase: u32,
    timeout: Duration,
    patience: Duration,
    tally: &Tally,
) -> u32 {
    let deadline = Instant::now() + patience;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let value = Value { phase, n: attempts };
        match ask(requester, topic, value, timeout, tally).await {
            Ok(()) => return attempts,
            Err(e) if Instant::now() < deadline => {
                eprintln!("request fault: phase {phase}, attempt {attempts}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("phase {phase}: no request answered within {patience:?}: {e} ({e:?})"),
        }
    }
}

/// A responder echoing every [`Value`], consuming `topic` on `broker`.
async fn echo_responder(ctx: &Ctx, broker: &Broker, topic: &str) -> Running {
    let handler = runtime::responder(broker, |value: Envelope<Value>| async move {
        Ok::<_, runtime::HandlerError>(value.body)
    });
    let subscription = Subscription::new(topic, ctx.name("responders"));
    let consumer = Consumer::builder(broker.clone(), subscription, handler)
        .concurrency(8)
        .build();
    Running::start(ctx, consumer).await
}

/// Requests of phase `phase`, [`DURING_CONCURRENCY`] at a time with
/// `timeout` each, until `stop` is set: every one must return, answered or
/// with a typed error.
fn keep_asking(
    requester: Broker,
    topic: String,
    phase: u32,
    timeout: Duration,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        futures::stream::iter(0..)
            .take_while(|_| std::future::ready(!stop.load(Ordering::SeqCst)))
            .for_each_concurrent(DURING_CONCURRENCY, |n| {
                let (requester, topic, tally) = (&requester, &topic, &tally);
                async move {
                    let outcome = ask(requester, topic, Value { phase, n }, timeout, tally).await;
                    if outcome.is_err() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
            .await;
    })
}

/// [`BATCH`] requests of `phase` at once, each with `timeout`: every one
/// must be answered with its own value.
async fn batch_all_answered(
    requester: &Broker,
    topic: &str,
    phase: u32,
    timeout: Duration,
    tally: &Tally,
) {
    let outcomes = futures::future::join_all((0..BATCH).map(|n| {
        let value = Value { phase, n };
        async move { (value, ask(requester, topic, value, timeout, tally).await) }
    }))
    .await;
    let failed: Vec<String> = outcomes
        .into_iter()
        .filter_map(|(value, outcome)| outcome.err().map(|e| format!("{}: {e}", value.n)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {BATCH} requests after the fault were not answered: {failed:?}",
        failed.len()
    );
}

/// The shared course of the reset and restart cases: answered before,
/// requests in flight through `fault`, answered again on the same handle
/// within `recovery`, then a batch answered in full.
async fn answered_across(
    ctx: &Ctx,
    case: &str,
    requester: &Broker,
    topic: &str,
    recovery: Duration,
    fault: impl std::future::Future<Output = ()>,
) {
    let tally = Arc::new(Tally::default());
    let timeout = ctx.patience() / 3;
    let attempts = until_answered(requester, topic, 0, timeout, ctx.patience() * 3, &tally).await;
    eprintln!("request fault: first answer on attempt {attempts}");
    for n in 0..BEFORE {
        ask(
            requester,
            topic,
            Value { phase: 1, n },
            ctx.patience(),
            &tally,
        )
        .await
        .unwrap_or_else(|e| panic!("request {n} before the fault: {e} ({e:?})"));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let answered_before = tally.answered.load(Ordering::SeqCst);
    let during = keep_asking(
        requester.clone(),
        topic.to_owned(),
        2,
        timeout,
        tally.clone(),
        stop.clone(),
    );
    // The fault hits a requester at work: some of its requests were
    // answered, and as many as it keeps going are in flight.
    crate::runtime_cases::wait_for(
        ctx,
        "requests answered before the fault",
        || u64::from(tally.answered.load(Ordering::SeqCst)),
        || tally.answered.load(Ordering::SeqCst) >= answered_before + DURING_CONCURRENCY as u32,
    )
    .await;
    fault.await;
    let faulted = Instant::now();
    let attempts = until_answered(requester, topic, 3, timeout, recovery, &tally).await;
    eprintln!(
        "request fault: answered again {:.2?} after the fault, on attempt {attempts}",
        faulted.elapsed()
    );
    stop.store(true, Ordering::SeqCst);
    during.await.expect("the requests during the fault");

    batch_all_answered(requester, topic, 4, ctx.patience(), &tally).await;
    tally.print(ctx, case, requester.late_replies());
    assert_eq!(tally.crossed.load(Ordering::SeqCst), 0);
    assert_eq!(
        tally.answered.load(Ordering::SeqCst) + tally.typed_errors.load(Ordering::SeqCst),
        tally.attempts.load(Ordering::SeqCst),
        "every request returned"
    );
}

/// A responder on a connection of its own (reaching the server directly),
/// `requester` answered across `fault` (see [`answered_across`]), then
/// everything stopped and closed.
async fn responded_across(
    ctx: &Ctx,
    case: &str,
    requester: Broker,
    recovery: Duration,
    fault: impl std::future::Future<Output = ()>,
) {
    let responding = ctx.broker().await;
    let topic = ctx.name("ask");
    let responder = echo_responder(ctx, &responding, &topic).await;
    answered_across(ctx, case, &requester, &topic, recovery, fault).await;
    responder.stop(ctx).await;
    requester.close().await.expect("close the requester");
    // A pull cut by the fault (NATS after a restart) must not hold the
    // responder's close past its bound either.
    responding
        .close()
        .await
        .unwrap_or_else(|e| panic!("close the responder: {e} ({e:?})"));
}

async fn request_survives_connection_resets(ctx: Ctx) {
    let (requester, proxy) = ctx.proxied_broker().await;
    let resets = async {
        let reset = proxy.reset_all();
        eprintln!("request fault: reset {reset} connections");
    };
    let case = "request_survives_connection_resets";
    responded_across(&ctx, case, requester, ctx.patience() * 2, resets).await;
}

async fn request_survives_a_broker_restart(ctx: Ctx) {
    let requester = ctx.broker().await;
    let restart = async {
        ctx.restart_broker().await;
        eprintln!("request fault: broker restarted");
    };
    // The responder rejoins its group after the restart too.
    let case = "request_survives_a_broker_restart";
    responded_across(&ctx, case, requester, ctx.patience() * 4, restart).await;
}

async fn request_through_a_black_hole_times_out_then_recovers(ctx: Ctx) {
    const CASE: &str = "request_through_a_black_hole_times_out_then_recovers";
    /// What a timed-out request may take beyond its timeout.
    const MARGIN: Duration = Duration::from_secs(1);
    let (requester, proxy) = ctx.proxied_broker().await;
    let responding = ctx.broker().await;
    let topic = ctx.name("ask");
    let responder = echo_responder(&ctx, &responding, &topic).await;
    let tally = Tally::default();
    let timeout = ctx.patience() / 3;
    until_answered(&requester, &topic, 0, timeout, ctx.patience() * 3, &tally).await;

    proxy.black_hole();
    let bounded = Duration::from_secs(2);
    for n in 0..3 {
        let started = Instant::now();
        let outcome = ask(&requester, &topic, Value { phase: 1, n }, bounded, &tally).await;
        let took = started.elapsed();
        eprintln!(
            "request fault: through the black hole: {took:.2?} (timeout {bounded:?}): {outcome:?}"
        );
        match outcome {
            Err(RequestError::Timeout { elapsed }) => assert!(
                elapsed >= bounded && took <= bounded + MARGIN,
                "timed out after {took:?} (reported {elapsed:?}); timeout {bounded:?}, margin {MARGIN:?}"
            ),
            other => panic!("expected RequestError::Timeout through a black hole, got {other:?}"),
        }
    }
    proxy.heal();
    let healed = Instant::now();
    let attempts = until_answered(&requester, &topic, 2, timeout, ctx.patience() * 2, &tally).await;
    eprintln!(
        "request fault: answered again {:.2?} after the heal, on attempt {attempts}",
        healed.elapsed()
    );
    batch_all_answered(&requester, &topic, 3, ctx.patience(), &tally).await;
    tally.print(&ctx, CASE, requester.late_replies());
    assert_eq!(tally.crossed.load(Ordering::SeqCst), 0);
    responder.stop(&ctx).await;
    requester.close().await.expect("close the requester");
    responding.close().await.expect("close the responder");
}
