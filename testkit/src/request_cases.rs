//! Request/reply cases: replies reach their own requester with the flow's
//! ids, responder failures come back typed, timeouts are bounded and late
//! replies never leak, many requesters and responders never cross, a
//! missing or restarted responder never hangs a requester, and a circuit
//! breaker guards a failing request.
//!
//! Pass conditions are exact counts and typed outcomes. The one bound on
//! time is the one a requester relies on: a request that times out
//! returns within its timeout plus a margin.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use courier_core::request::{RemoteErrorKind, RequestError, headers};
use courier_core::resilience::{BreakerError, CircuitBreaker, CircuitBreakerConfig, CircuitState};
use courier_core::runtime::{self, Consumer, Envelope, HandlerError};
use courier_core::{Broker, Message, Subscription};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::harness::{Capability, Case, Ctx};
use crate::runtime_cases::{Running, wait_for};

macro_rules! case {
    ($name:ident) => {
        case!($name, &[])
    };
    ($name:ident, $needs:expr) => {
        Case::new(stringify!($name), $needs, |ctx| Box::pin($name(ctx)))
    };
}

/// Every request/reply case.
pub fn cases() -> Vec<Case> {
    vec![
        case!(request_reply_matches_the_request_and_keeps_the_flow),
        case!(request_responder_failure_comes_back_as_remote_error),
        case!(request_times_out_in_bound_and_late_replies_do_not_leak),
        case!(request_many_requesters_and_responders_never_cross),
        case!(
            request_without_responders_fails_at_once,
            &[Capability::NoResponders]
        ),
        case!(request_unanswered_times_out_and_expired_is_not_processed),
        case!(request_responder_restart_answers_or_fails_typed),
        case!(request_circuit_breaker_opens_fails_fast_and_recovers),
    ]
}

/// A request's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Ask {
    requester: u32,
    seq: u32,
    note: String,
}

impl Ask {
    fn new(requester: u32, seq: u32, note: &str) -> Self {
        Ask {
            requester,
            seq,
            note: note.to_owned(),
        }
    }

    fn message(&self) -> Message {
        Message::from_json(self).expect("encode")
    }
}

/// A reply's body: the request echoed, with what the responder saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Answer {
    ask: Ask,
    responder: u32,
    request_id: String,
    correlation_id: Option<String>,
    tenant: Option<String>,
}

/// Echoes each request as an [`Answer`], counting calls.
fn echo(broker: &Broker, responder: u32, calls: Arc<AtomicU64>) -> impl runtime::Handler {
    runtime::responder(broker, move |ask: Envelope<Ask>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            Ok(Answer {
                responder,
                request_id: ask.meta.id().to_string(),
                correlation_id: ask.meta.correlation_id().map(str::to_owned),
                tenant: ask.meta.header("tenant").map(str::to_owned),
                ask: ask.body,
            })
        }
    })
}

/// The responders' group: a name of the case's own, since on Kafka a
/// group is shared by every topic it consumes.
fn responders(ctx: &Ctx) -> String {
    ctx.name("responders")
}

/// Starts a responder consuming `topic` as the case's responders' group.
async fn start(
    ctx: &Ctx,
    broker: &Broker,
    topic: &str,
    concurrency: usize,
    handler: impl runtime::Handler,
) -> Running {
    let consumer = Consumer::builder(
        broker.clone(),
        Subscription::new(topic, responders(ctx)),
        handler,
    )
    .concurrency(concurrency)
    .build();
    Running::start(ctx, consumer).await
}

/// How long a request may wait for a responder that has just started (or
/// restarted): a consumer group that has just changed members may take a
/// while to hand out its partitions (the Kafka-protocol test broker takes
/// seconds to rebalance under load).
fn after_start(ctx: &Ctx) -> Duration {
    ctx.patience() * 3
}

fn answer_of(reply: &Message) -> Answer {
    reply.json::<Answer>().expect("the reply decodes")
}

async fn request_reply_matches_the_request_and_keeps_the_flow(ctx: Ctx) {
    let broker = ctx.broker().await;
    let topic = ctx.name("ask");
    let calls = Arc::new(AtomicU64::new(0));
    let responder = start(&ctx, &broker, &topic, 4, echo(&broker, 0, calls.clone())).await;

    let ask = Ask::new(1, 1, "how many apples");
    let flow = format!("flow-{}", ctx.name("x"));
    let request = ask
        .message()
        .with_correlation_id(flow.clone())
        .unwrap()
        .with_header("tenant", "acme")
        .unwrap();
    let request_id = request.id().to_string();
    let reply = broker
        .request(&topic, request, ctx.patience())
        .await
        .expect("a reply");
    let answer = answer_of(&reply);
    assert_eq!(answer.ask, ask);
    assert_eq!(answer.request_id, request_id);
    assert_eq!(answer.correlation_id.as_deref(), Some(flow.as_str()));
    assert_eq!(answer.tenant.as_deref(), Some("acme"));
    assert_eq!(reply.correlation_id(), Some(flow.as_str()));
    assert_eq!(reply.causation_id(), Some(request_id.as_str()));
    assert_eq!(reply.content_type(), Some(courier_core::message::JSON));
    for name in [
        headers::REQUEST_ID,
        headers::REPLY_TO,
        headers::REPLY_STATUS,
    ] {
        assert_eq!(
            reply.header(name),
            None,
            "{name} is stripped from the reply"
        );
    }

    // The typed form; without a correlation id the flow starts at the request.
    let typed: Answer = broker
        .request_json(&topic, &Ask::new(1, 2, "typed"), ctx.patience())
        .await
        .expect("a typed reply");
    assert_eq!(typed.ask, Ask::new(1, 2, "typed"));
    assert_eq!(typed.correlation_id, None);

    let stats = responder.stop(&ctx).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!((stats.handled, stats.dead_lettered), (2, 0));
    assert_eq!(broker.late_replies(), 0);
}

async fn request_responder_failure_comes_back_as_remote_error(ctx: Ctx) {
    let broker = ctx.broker().await;
    let topic = ctx.name("ask");
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let handler = runtime::responder(&broker, move |ask: Envelope<Ask>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            match ask.body.note.as_str() {
                "reject" => Err(HandlerError::permanent("out of stock: sku 7")),
                "flaky" => Err(HandlerError::transient("stock database unavailable")),
                _ => Ok(ask.body),
            }
        }
    });
    let responder = start(&ctx, &broker, &topic, 4, handler).await;

    let outcome = broker
        .request(&topic, Ask::new(1, 1, "reject").message(), ctx.patience())
        .await;
    match outcome {
        Err(RequestError::Remote { kind, message }) => {
            assert_eq!(kind, RemoteErrorKind::Permanent);
            assert!(message.contains("out of stock: sku 7"), "{message}");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    let outcome = broker
        .request(&topic, Ask::new(1, 2, "flaky").message(), ctx.patience())
        .await;
    match outcome {
        Err(e @ RequestError::Remote { .. }) => {
            assert!(e.is_retryable(), "a transient remote failure is retryable");
            assert!(e.to_string().contains("stock database unavailable"), "{e}");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    let outcome = broker
        .request(&topic, Message::new("not json"), ctx.patience())
        .await;
    assert!(
        matches!(
            outcome,
            Err(RequestError::Remote {
                kind: RemoteErrorKind::BadRequest,
                ..
            })
        ),
        "{outcome:?}"
    );

    // Failures are answered once, acked: not retried, not dead-lettered.
    let stats = responder.stop(&ctx).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        (stats.handled, stats.retried, stats.dead_lettered),
        (3, 0, 0)
    );
}

async fn request_times_out_in_bound_and_late_replies_do_not_leak(ctx: Ctx) {
    let broker = ctx.broker().await;
    let topic = ctx.name("ask");
    let gate = Arc::new(Semaphore::new(0));
    let slow_started = Arc::new(AtomicU64::new(0));
    let handler = runtime::responder(&broker, {
        let (gate, slow_started) = (gate.clone(), slow_started.clone());
        move |ask: Envelope<Ask>| {
            let (gate, slow_started) = (gate.clone(), slow_started.clone());
            async move {
                if ask.body.note == "slow" {
                    slow_started.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await.expect("open").forget();
                }
                Ok(ask.body)
            }
        }
    });
    let responder = start(&ctx, &broker, &topic, 8, handler).await;

    // The responder holds the first request past its requester's timeout.
    let timeout = ctx.patience() / 5;
    let slow = tokio::spawn({
        let (broker, topic) = (broker.clone(), topic.clone());
        async move {
            broker
                .request(&topic, Ask::new(1, 1, "slow").message(), timeout)
                .await
        }
    });
    let started = slow_started.clone();
    wait_for(
        &ctx,
        "the slow request reaching the responder",
        || 0,
        || started.load(Ordering::SeqCst) == 1,
    )
    .await;
    match slow.await.expect("join") {
        Err(RequestError::Timeout { elapsed }) => {
            let margin = Duration::from_secs(1).max(timeout / 2);
            assert!(
                elapsed >= timeout && elapsed < timeout + margin,
                "timed out after {elapsed:?}, bound {timeout:?} + {margin:?}"
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    // A dropped request: the responder has it, its requester stops waiting.
    let dropped = {
        let (broker, topic) = (broker.clone(), topic.clone());
        tokio::spawn(async move {
            broker
                .request(
                    &topic,
                    Ask::new(1, 2, "slow").message(),
                    Duration::from_secs(600),
                )
                .await
        })
    };
    wait_for(
        &ctx,
        "the second slow request reaching the responder",
        || 0,
        || started.load(Ordering::SeqCst) == 2,
    )
    .await;
    dropped.abort();
    assert!(dropped.await.is_err_and(|e| e.is_cancelled()));

    // Both late replies go out while the next request waits for its own.
    let next = {
        let (broker, topic, patience) = (broker.clone(), topic.clone(), ctx.patience());
        tokio::spawn(async move {
            broker
                .request(&topic, Ask::new(1, 3, "fast").message(), patience)
                .await
        })
    };
    gate.add_permits(2);
    let reply = next
        .await
        .expect("join")
        .expect("the next request is answered");
    assert_eq!(reply.json::<Ask>().expect("decode"), Ask::new(1, 3, "fast"));
    wait_for(
        &ctx,
        "both late replies counted",
        || broker.late_replies(),
        || broker.late_replies() == 2,
    )
    .await;
    let reply = broker
        .request(&topic, Ask::new(1, 4, "fast").message(), ctx.patience())
        .await
        .expect("answered");
    assert_eq!(reply.json::<Ask>().expect("decode"), Ask::new(1, 4, "fast"));
    let stats = responder.stop(&ctx).await;
    assert_eq!((stats.handled, stats.dead_lettered), (4, 0));
    assert_eq!(broker.late_replies(), 2);
}

/// 1,000 concurrent requests from 4 requesters (connections of their own)
/// to 2 responders (competing in one group).
async fn request_many_requesters_and_responders_never_cross(ctx: Ctx) {
    const REQUESTERS: u32 = 4;
    const PER_REQUESTER: u32 = 250;
    let topic = ctx.name("ask");
    let calls = Arc::new(AtomicU64::new(0));
    let mut responders = Vec::new();
    let mut responder_brokers = Vec::new();
    for id in 0..2 {
        let broker = ctx.broker().await;
        responders.push(start(&ctx, &broker, &topic, 32, echo(&broker, id, calls.clone())).await);
        responder_brokers.push(broker);
    }
    let mut requesters = Vec::new();
    for _ in 0..REQUESTERS {
        requesters.push(ctx.broker().await);
    }

    let crossed = Arc::new(AtomicU32::new(0));
    let lost = Arc::new(AtomicU32::new(0));
    let answered = Arc::new(AtomicU32::new(0));
    let timeout = ctx.patience() * 4;
    let mut all: Vec<BoxFuture<'static, ()>> = Vec::new();
    for (r, broker) in requesters.iter().enumerate() {
        let r = u32::try_from(r).expect("few");
        for seq in 0..PER_REQUESTER {
            let (broker, topic) = (broker.clone(), topic.clone());
            let (crossed, lost, answered) = (crossed.clone(), lost.clone(), answered.clone());
            all.push(Box::pin(async move {
                let ask = Ask::new(r, seq, "count");
                match broker.request(&topic, ask.message(), timeout).await {
                    Ok(reply) if answer_of(&reply).ask == ask => {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {
                        crossed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        eprintln!("request {r}/{seq}: {e}");
                        lost.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
    }
    futures::stream::iter(all)
        .for_each_concurrent(None, |f| f)
        .await;
    let (crossed, lost, answered) = (
        crossed.load(Ordering::SeqCst),
        lost.load(Ordering::SeqCst),
        answered.load(Ordering::SeqCst),
    );
    eprintln!("answered {answered}, crossed {crossed}, lost {lost}");
    assert_eq!(
        (answered, crossed, lost),
        (REQUESTERS * PER_REQUESTER, 0, 0)
    );
    let mut handled = 0;
    for responder in responders {
        handled += responder.stop(&ctx).await.handled;
    }
    assert_eq!(handled, u64::from(REQUESTERS * PER_REQUESTER));
    for broker in &requesters {
        assert_eq!(broker.late_replies(), 0);
    }
}

async fn request_without_responders_fails_at_once(ctx: Ctx) {
    let broker = ctx.broker().await;
    let topic = ctx.name("nobody");
    let outcome = broker
        .request(&topic, Ask::new(1, 1, "anyone?").message(), ctx.patience())
        .await;
    match outcome {
        Err(RequestError::NoResponders { topic: named }) => assert_eq!(named, topic),
        other => panic!("expected no responders, got {other:?}"),
    }
    // The connection still works for requests that have a responder.
    let answered = ctx.name("answered");
    let calls = Arc::new(AtomicU64::new(0));
    let responder = start(&ctx, &broker, &answered, 1, echo(&broker, 0, calls)).await;
    let reply = broker
        .request(&answered, Ask::new(1, 2, "x").message(), ctx.patience())
        .await
        .expect("answered");
    assert_eq!(answer_of(&reply).ask, Ask::new(1, 2, "x"));
    responder.stop(&ctx).await;
}

async fn request_unanswered_times_out_and_expired_is_not_processed(ctx: Ctx) {
    let broker = ctx.broker().await;
    let topic = ctx.name("ask");
    // The group exists, so the broker keeps the request; nobody runs yet.
    broker
        .provision(&Subscription::new(&topic, responders(&ctx)))
        .await
        .expect("provision");
    let timeout = ctx.patience() / 10;
    let expired = Ask::new(1, 1, "expired").message().with_key("k");
    // Where the broker keeps requests for the group, the requester times
    // out; where requests go only to running responders (NATS core), the
    // broker says at once that none runs.
    let kept = match broker.request(&topic, expired, timeout).await {
        Err(RequestError::Timeout { elapsed }) => {
            assert!(elapsed >= timeout, "{elapsed:?}");
            true
        }
        Err(RequestError::NoResponders { .. }) if ctx.adapter().has(Capability::NoResponders) => {
            false
        }
        other => panic!("expected a timeout, got {other:?}"),
    };

    // A responder started now skips the expired request and answers the next.
    let calls = Arc::new(AtomicU64::new(0));
    let responder = start(&ctx, &broker, &topic, 4, echo(&broker, 0, calls.clone())).await;
    let fresh = Ask::new(1, 2, "fresh");
    let reply = broker
        .request(&topic, fresh.message().with_key("k"), after_start(&ctx))
        .await
        .expect("answered");
    assert_eq!(answer_of(&reply).ask, fresh);
    let metrics = responder.metrics.clone();
    let settled = 1 + u64::from(kept);
    wait_for(
        &ctx,
        "the requests settled",
        || metrics.snapshot().handled,
        || metrics.snapshot().handled == settled,
    )
    .await;
    let stats = responder.stop(&ctx).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the expired request was not processed"
    );
    assert_eq!((stats.handled, stats.dead_lettered), (settled, 0));
}

async fn request_responder_restart_answers_or_fails_typed(ctx: Ctx) {
    const REQUESTS: u32 = 40;
    let requester = ctx.broker().await;
    let topic = ctx.name("ask");
    let calls = Arc::new(AtomicU64::new(0));
    let first_broker = ctx.broker().await;
    let first = start(
        &ctx,
        &first_broker,
        &topic,
        4,
        echo(&first_broker, 0, calls.clone()),
    )
    .await;

    let timeout = ctx.patience() / 3;
    let answered = Arc::new(AtomicU32::new(0));
    let typed_errors = Arc::new(AtomicU32::new(0));
    let crossed = Arc::new(AtomicU32::new(0));
    let requests = {
        let (requester, topic) = (requester.clone(), topic.clone());
        let (answered, typed_errors, crossed) =
            (answered.clone(), typed_errors.clone(), crossed.clone());
        tokio::spawn(async move {
            futures::stream::iter(0..REQUESTS)
                .for_each_concurrent(4, |seq| {
                    let (requester, topic) = (requester.clone(), topic.clone());
                    let (answered, typed_errors, crossed) =
                        (answered.clone(), typed_errors.clone(), crossed.clone());
                    async move {
                        let ask = Ask::new(1, seq, "restart");
                        // Never a hang: the request's own timeout ends it.
                        let outcome = tokio::time::timeout(
                            timeout * 2,
                            requester.request(&topic, ask.message(), timeout),
                        )
                        .await
                        .expect("a request returns within its timeout");
                        match outcome {
                            Ok(reply) if answer_of(&reply).ask == ask => {
                                answered.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(_) => {
                                crossed.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(
                                RequestError::Timeout { .. }
                                | RequestError::NoResponders { .. }
                                | RequestError::Remote { .. }
                                | RequestError::Transport(_),
                            ) => {
                                typed_errors.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => panic!("unexpected error {e:?}"),
                        }
                    }
                })
                .await;
        })
    };
    let progress = answered.clone();
    wait_for(
        &ctx,
        "the first responder answering",
        || u64::from(progress.load(Ordering::SeqCst)),
        || progress.load(Ordering::SeqCst) >= 10,
    )
    .await;
    first.stop(&ctx).await;
    first_broker.close().await.expect("close");
    let second_broker = ctx.broker().await;
    let second = start(
        &ctx,
        &second_broker,
        &topic,
        4,
        echo(&second_broker, 1, calls),
    )
    .await;
    requests.await.expect("requests");
    let (answered, typed_errors, crossed) = (
        answered.load(Ordering::SeqCst),
        typed_errors.load(Ordering::SeqCst),
        crossed.load(Ordering::SeqCst),
    );
    eprintln!("answered {answered}, typed errors {typed_errors}, crossed {crossed}");
    assert_eq!(crossed, 0);
    assert_eq!(answered + typed_errors, REQUESTS);

    // The restarted responder answers what comes next.
    for seq in 0..5 {
        let ask = Ask::new(2, seq, "after");
        let reply = requester
            .request(&topic, ask.message(), after_start(&ctx))
            .await
            .expect("answered after the restart");
        let answer = answer_of(&reply);
        assert_eq!((answer.ask, answer.responder), (ask, 1));
    }
    second.stop(&ctx).await;
}

async fn request_circuit_breaker_opens_fails_fast_and_recovers(ctx: Ctx) {
    let broker = ctx.broker().await;
    let topic = ctx.name("ask");
    let failing = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU64::new(0));
    let handler = runtime::responder(&broker, {
        let (failing, calls) = (failing.clone(), calls.clone());
        move |ask: Envelope<Ask>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let failing = failing.load(Ordering::SeqCst);
            async move {
                if failing {
                    Err(HandlerError::transient("inventory down"))
                } else {
                    Ok(ask.body)
                }
            }
        }
    });
    let responder = start(&ctx, &broker, &topic, 4, handler).await;
    // Long enough that the five calls refused below all come while it is
    // open, however slowly a loaded machine runs them; waiting for the
    // half-open state polls.
    let breaker = CircuitBreaker::new(
        CircuitBreakerConfig::default()
            .failure_threshold(3)
            .cool_down(Duration::from_secs(3)),
    );
    let call = |seq: u32| {
        let (broker, topic, breaker) = (broker.clone(), topic.clone(), breaker.clone());
        let patience = ctx.patience();
        async move {
            breaker
                .call_if(
                    || broker.request(&topic, Ask::new(1, seq, "stock").message(), patience),
                    RequestError::is_retryable,
                )
                .await
        }
    };

    for seq in 0..3 {
        match call(seq).await {
            Err(BreakerError::Failed(RequestError::Remote { .. })) => {}
            other => panic!("expected the remote failure, got {other:?}"),
        }
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    // Open: refused at once, the responder is not called, refusals counted.
    for seq in 3..8 {
        assert!(call(seq).await.unwrap_err().is_open());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(breaker.rejected(), 5);

    failing.store(false, Ordering::SeqCst);
    let probe = breaker.clone();
    wait_for(
        &ctx,
        "the breaker half-opening",
        || 0,
        || probe.state() == CircuitState::HalfOpen,
    )
    .await;
    let reply = call(8).await.expect("the probe is answered");
    assert_eq!(reply.json::<Ask>().expect("decode").seq, 8);
    assert_eq!(breaker.state(), CircuitState::Closed);
    call(9).await.expect("closed again");
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(breaker.rejected(), 5);
    responder.stop(&ctx).await;
}
