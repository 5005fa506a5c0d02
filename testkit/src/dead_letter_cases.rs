//! Dead letters on every adapter: an invalid dead-letter topic fails the
//! start, the dead-letter topic is provisioned by the runtime, and a copy
//! the dead-letter topic refuses is published again with a backoff while
//! the message is held, never looped and never lost.
//!
//! Pass conditions are exact counts: handler calls, dead-letter copies,
//! deliveries left over. The one bound that involves time is the number of
//! refused publishes, which may not exceed what the backoff schedule allows
//! in the time the case took (a loop without backoff exceeds it by
//! orders of magnitude).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use courier_core::delivery::{DLQ_ORIGINAL_TOPIC, DLQ_REASON, default_dead_letter_topic};
use courier_core::name::{MAX_NAME_LEN, NameKind, NameProblem};
use courier_core::runtime::{
    self, Consumer, ConsumerBuilder, DEAD_LETTER_RETRY_MAX_DELAY, DEAD_LETTER_RETRY_MIN_DELAY,
    Handler, HandlerError,
};
use courier_core::{Broker, DeliveryStream, Error, Message, MessageId, Subscription};

use crate::harness::{Capability, Case, Ctx};
use crate::runtime_cases::{Running, wait_for};

/// Every dead-letter case.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new("dead_letter_invalid_topic_fails_the_start", &[], |ctx| {
            Box::pin(dead_letter_invalid_topic_fails_the_start(ctx))
        }),
        Case::new(
            "dead_letter_topic_is_provisioned_by_the_runtime",
            &[],
            |ctx| Box::pin(dead_letter_topic_is_provisioned_by_the_runtime(ctx)),
        ),
        Case::new(
            "dead_letter_unroutable_copy_is_held_and_retried",
            &[Capability::RefusesTopicsWithoutGroups],
            |ctx| Box::pin(dead_letter_unroutable_copy_is_held_and_retried(ctx)),
        ),
        Case::new(
            "dead_letter_full_target_is_held_and_retried",
            &[Capability::QueueLimit],
            |ctx| Box::pin(dead_letter_full_target_is_held_and_retried(ctx)),
        ),
    ]
}

const REASON: &str = "poison: the handler refuses this message";

/// A handler that counts its calls in `calls` and fails every message for
/// good with `reason`: each message is dead-lettered at its first attempt.
pub fn poison_handler(calls: &Arc<AtomicU32>, reason: &'static str) -> impl Handler {
    let calls = calls.clone();
    runtime::raw(move |_message: Message| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(HandlerError::permanent(std::io::Error::other(reason)))
        }
    })
}

/// A consumer of `subscription` with a [`poison_handler`].
fn refusing_consumer(
    broker: &Broker,
    subscription: &Subscription,
    calls: &Arc<AtomicU32>,
) -> ConsumerBuilder {
    Consumer::builder(broker, subscription.clone(), poison_handler(calls, REASON))
}

async fn subscribe(broker: &Broker, subscription: Subscription) -> DeliveryStream {
    broker.subscribe(subscription).await.expect("subscribe")
}

async fn dead_letter_invalid_topic_fails_the_start(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    broker.provision(&sub).await.expect("provision");
    let waiting = Message::new("must not be consumed");
    let waiting_id = waiting.id().clone();
    broker.publish(sub.topic(), waiting).await.expect("publish");
    let calls = Arc::new(AtomicU32::new(0));

    let started = refusing_consumer(&broker, &sub, &calls)
        .dead_letter_topic("dead letters")
        .start()
        .await;
    match started {
        Err(Error::InvalidName(invalid)) => {
            assert_eq!(invalid.kind, NameKind::Topic);
            assert_eq!(invalid.name, "dead letters");
        }
        Err(other) => panic!("expected InvalidName, got {other} ({other:?})"),
        Ok(running) => {
            drop(running);
            panic!("a consumer with an invalid dead-letter topic started");
        }
    }

    // The default `<topic>.dlq` of a topic of the longest valid name is
    // one suffix too long: refused the same way.
    let base = ctx.name("t");
    let longest = format!("{base}{}", "x".repeat(MAX_NAME_LEN - base.len()));
    let long_sub = Subscription::new(longest.clone(), ctx.name("g"));
    match refusing_consumer(&broker, &long_sub, &calls).start().await {
        Err(Error::InvalidName(invalid)) => {
            assert_eq!(
                (invalid.kind, invalid.problem),
                (NameKind::Topic, NameProblem::TooLong)
            );
            // The error names the topic cut after the limit.
            assert!(default_dead_letter_topic(&longest).starts_with(&invalid.name));
        }
        Err(other) => panic!("expected InvalidName, got {other} ({other:?})"),
        Ok(running) => {
            drop(running);
            panic!("a consumer whose default dead-letter topic is too long started");
        }
    }

    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was handled");
    let mut stream = subscribe(&broker, sub).await;
    let delivery = ctx.next(&mut stream).await;
    assert_eq!(
        delivery.message().id(),
        &waiting_id,
        "the message is still there"
    );
    delivery.ack().await.expect("ack");
    ctx.expect_nothing(&mut stream).await;
    broker.close().await.expect("close");
}

async fn dead_letter_topic_is_provisioned_by_the_runtime(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let calls = Arc::new(AtomicU32::new(0));
    // Nobody provisions `<topic>.dlq`: the runtime does, for its group.
    let running = Running::start(&ctx, refusing_consumer(&broker, &sub, &calls).build()).await;
    let poison = Message::new("poison");
    let poison_id = poison.id().clone();
    broker.publish(sub.topic(), poison).await.expect("publish");
    let metrics = running.metrics.clone();
    wait_for(
        &ctx,
        "the poison message dead-lettered",
        || metrics.snapshot().dead_lettered,
        || {
            let now = metrics.snapshot();
            now.dead_lettered == 1 || now.dead_letter_failures > 0
        },
    )
    .await;
    let stats = running.stop(&ctx).await;
    assert_eq!((stats.dead_lettered, stats.dead_letter_failures), (1, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "handled once");

    let dead_letters = Subscription::new(default_dead_letter_topic(sub.topic()), sub.group());
    let mut dead = subscribe(&broker, dead_letters).await;
    let copy = ctx.next(&mut dead).await;
    assert_copy(copy.message(), &poison_id, &sub);
    copy.ack().await.expect("ack");
    ctx.expect_nothing(&mut dead).await;
    let mut stream = subscribe(&broker, sub).await;
    ctx.expect_nothing(&mut stream).await;
    broker.close().await.expect("close");
}

fn assert_copy(copy: &Message, poison_id: &MessageId, sub: &Subscription) {
    assert_eq!(copy.id(), poison_id, "the copy keeps the id");
    assert_eq!(copy.header(DLQ_REASON), Some(REASON));
    assert_eq!(copy.header(DLQ_ORIGINAL_TOPIC), Some(sub.topic()));
}

/// The most dead-letter publishes of one message (or, where the broker
/// holds it meanwhile, deliveries) the dead-letter backoff allows within
/// `elapsed`: the n-th comes at least the sum of the first n - 1 waits
/// after the first (jitter only lengthens a wait).
pub fn most_dead_letter_tries_within(elapsed: Duration) -> u64 {
    let (mut refusals, mut at, mut wait) = (0, Duration::ZERO, DEAD_LETTER_RETRY_MIN_DELAY);
    while at <= elapsed {
        refusals += 1;
        at += wait;
        wait = (wait * 2).min(DEAD_LETTER_RETRY_MAX_DELAY);
    }
    refusals
}

/// What makes the dead-letter topic refuse, and how it heals.
enum Refusal {
    /// No group on the dead-letter topic (the runtime's provisioning off);
    /// heals when a group is provisioned.
    NoGroup,
    /// The dead-letter group is full; heals when one message is taken out.
    FullGroup { limit: usize },
}

async fn dead_letter_unroutable_copy_is_held_and_retried(ctx: Ctx) {
    let broker = ctx.broker().await;
    refused_copy_is_held_and_retried(&ctx, broker, Refusal::NoGroup).await;
}

async fn dead_letter_full_target_is_held_and_retried(ctx: Ctx) {
    let (broker, limit) = ctx.queue_limited_broker().await;
    refused_copy_is_held_and_retried(&ctx, broker, Refusal::FullGroup { limit }).await;
}

/// The poison message is handled once, its copy refused at least three
/// times (no more often than the backoff allows), then taken once the
/// dead-letter topic heals: one copy, nothing left in the group.
async fn refused_copy_is_held_and_retried(ctx: &Ctx, broker: Broker, refusal: Refusal) {
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let dlq_topic = default_dead_letter_topic(sub.topic());
    let calls = Arc::new(AtomicU32::new(0));
    let consumer = refusing_consumer(&broker, &sub, &calls)
        .provision_dead_letter_group(matches!(refusal, Refusal::FullGroup { .. }))
        .build();
    let began = Instant::now();
    let running = Running::start(ctx, consumer).await;
    let runtime_group = Subscription::new(dlq_topic.clone(), sub.group());
    if let Refusal::FullGroup { limit } = refusal {
        let fillers = (0..limit)
            .map(|i| Message::new(format!("filler {i}")))
            .collect();
        broker
            .publish_batch(&dlq_topic, fillers)
            .await
            .expect("fill the dead-letter group");
    }
    let poison = Message::new("poison");
    let poison_id = poison.id().clone();
    broker.publish(sub.topic(), poison).await.expect("publish");

    let metrics = running.metrics.clone();
    // Stops early when the message comes back to the handler: a loop.
    wait_for(
        ctx,
        "three refused dead-letter publishes",
        || metrics.snapshot().dead_letter_failures,
        || metrics.snapshot().dead_letter_failures >= 3 || calls.load(Ordering::SeqCst) > 1,
    )
    .await;
    let refusing = metrics.snapshot();
    assert_eq!(refusing.dead_lettered, 0);
    assert_eq!(refusing.in_flight, 1, "the poison message is held");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "handled once, not looped");

    // Heal the dead-letter topic.
    let (mut dead, reader) = match refusal {
        Refusal::NoGroup => {
            let reader = Subscription::new(dlq_topic.clone(), ctx.name("reader"));
            broker.provision(&reader).await.expect("provision a reader");
            (None, reader)
        }
        Refusal::FullGroup { .. } => {
            let mut dead = subscribe(&broker, runtime_group.clone()).await;
            let filler = ctx.next(&mut dead).await;
            assert_ne!(filler.message().id(), &poison_id);
            filler.ack().await.expect("ack a filler");
            (Some(dead), runtime_group)
        }
    };
    wait_for(
        ctx,
        "the copy taken once the dead-letter topic healed",
        || metrics.snapshot().dead_letter_failures + metrics.snapshot().dead_lettered,
        || metrics.snapshot().dead_lettered == 1,
    )
    .await;
    let elapsed = began.elapsed();
    let stats = running.stop(ctx).await;
    let allowed = most_dead_letter_tries_within(elapsed);
    assert!(
        (3..=allowed).contains(&stats.dead_letter_failures),
        "{} refused publishes in {elapsed:?}; the backoff allows at most {allowed}",
        stats.dead_letter_failures
    );
    assert_eq!((stats.dead_lettered, stats.in_flight), (1, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "handled once in all");

    // Exactly one copy, with its reason, besides any filler left.
    let mut dead = match dead.take() {
        Some(dead) => dead,
        None => subscribe(&broker, reader).await,
    };
    let left = match refusal {
        Refusal::NoGroup => 1,
        Refusal::FullGroup { limit } => limit,
    };
    let mut copies = 0;
    for _ in 0..left {
        let delivery = ctx.next(&mut dead).await;
        if delivery.message().id() == &poison_id {
            assert_copy(delivery.message(), &poison_id, &sub);
            copies += 1;
        }
        delivery.ack().await.expect("ack");
    }
    assert_eq!(copies, 1, "one dead-letter copy");
    ctx.expect_nothing(&mut dead).await;
    let mut stream = subscribe(&broker, sub).await;
    ctx.expect_nothing(&mut stream).await;
    broker.close().await.expect("close");
}
