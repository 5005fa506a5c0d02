//! The consumer runtime's cases: ordering, retries, dead-lettering, panics
//! and graceful shutdown, run on every adapter.
//!
//! Pass conditions are exact counts and orders, never durations: waits
//! only bound how long a case may take to make progress, and the retry
//! case measures the gaps between attempts only to check that they grow.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_core::delivery::{
    DLQ_ATTEMPTS, DLQ_FIRST_FAILURE, DLQ_GROUP, DLQ_LAST_FAILURE, DLQ_ORIGINAL_TOPIC, DLQ_REASON,
};
use courier_core::runtime::{
    self, Consumer, ConsumerMetrics, ConsumerStats, HandlerError, RetryPolicy, ShutdownHandle,
};
use courier_core::{Broker, DeliveryStream, Message, MessageId, Subscription};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::harness::{Case, Ctx};

macro_rules! case {
    ($name:ident) => {
        Case::new(stringify!($name), &[], |ctx| Box::pin($name(ctx)))
    };
}

/// Every consumer runtime case.
pub fn cases() -> Vec<Case> {
    vec![
        case!(runtime_keeps_key_order_with_parallel_keys),
        case!(runtime_retries_with_growing_delays),
        case!(runtime_retry_holds_the_key_lane),
        case!(runtime_dead_letters_after_the_last_attempt),
        case!(runtime_undecodable_payload_dead_letters_at_once),
        case!(runtime_panicking_handler_is_retried),
        case!(runtime_shutdown_waits_for_in_flight_handlers),
        case!(runtime_shutdown_deadline_requeues_unfinished_work),
    ]
}

/// The payload of the runtime cases' messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Item {
    key: u32,
    seq: u32,
}

fn item_message(item: Item, keyed: bool) -> Message {
    let message = Message::json(&item).expect("encode");
    if keyed {
        message.with_key(format!("key-{}", item.key))
    } else {
        message
    }
}

async fn publish_items(broker: &Broker, topic: &str, items: &[(Item, bool)]) {
    for chunk in items.chunks(500) {
        let batch = chunk.iter().map(|&(i, k)| item_message(i, k)).collect();
        broker.publish_batch(topic, batch).await.expect("publish");
    }
}

/// A running consumer.
struct Running {
    shutdown: ShutdownHandle,
    metrics: ConsumerMetrics,
    task: JoinHandle<courier_core::Result<ConsumerStats>>,
}

impl Running {
    async fn start(broker: &Broker, consumer: Consumer) -> Self {
        broker
            .provision(consumer.subscription())
            .await
            .expect("provision");
        Running {
            shutdown: consumer.shutdown_handle(),
            metrics: consumer.metrics(),
            task: tokio::spawn(consumer.run()),
        }
    }

    /// Triggers the shutdown and waits for the run to end.
    async fn stop(self, ctx: &Ctx) -> ConsumerStats {
        self.shutdown.shutdown();
        match tokio::time::timeout(ctx.patience() * 2, self.task).await {
            Ok(Ok(Ok(stats))) => stats,
            Ok(Ok(Err(e))) => panic!("consumer failed: {e} ({e:?})"),
            Ok(Err(e)) => panic!("consumer task: {e}"),
            Err(_) => panic!("consumer did not shut down"),
        }
    }
}

/// Waits until `done` holds, failing when `progress` stops changing for
/// the adapter's patience.
async fn wait_for(ctx: &Ctx, what: &str, progress: impl Fn() -> u64, done: impl Fn() -> bool) {
    let mut last = progress();
    let mut since = Instant::now();
    while !done() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = progress();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > ctx.patience() {
            panic!("no progress towards {what} within {:?}", ctx.patience());
        }
    }
}

fn total(stats: &ConsumerStats) -> u64 {
    stats.handled + stats.failed + stats.dead_lettered
}

async fn subscribe(broker: &Broker, subscription: Subscription) -> DeliveryStream {
    broker.subscribe(subscription).await.expect("subscribe")
}

/// A delay of 0 to 299 µs that looks random but is the same every run.
fn small_delay(seq: u32) -> Duration {
    let spread = seq.wrapping_mul(2_654_435_761) >> 8;
    Duration::from_micros(u64::from(spread % 300))
}

async fn pause(delay: Duration) {
    if delay < Duration::from_micros(100) {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(delay).await;
    }
}

/// Counts handlers running at once and remembers the most.
#[derive(Default)]
struct Overlap {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Overlap {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn runtime_keeps_key_order_with_parallel_keys(ctx: Ctx) {
    const MESSAGES: u32 = 10_000;
    const KEYS: u32 = 16;
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let seen: Arc<Mutex<HashMap<u32, Vec<u32>>>> = Arc::default();
    let overlap = Arc::new(Overlap::default());
    let handler = {
        let (seen, overlap) = (seen.clone(), overlap.clone());
        runtime::typed(move |item: Item| {
            let (seen, overlap) = (seen.clone(), overlap.clone());
            async move {
                overlap.enter();
                pause(small_delay(item.seq.wrapping_mul(KEYS) + item.key)).await;
                seen.lock()
                    .expect("lock")
                    .entry(item.key)
                    .or_default()
                    .push(item.seq);
                overlap.leave();
                Ok(())
            }
        })
    };
    let consumer = Consumer::builder(&broker, sub.clone(), handler)
        .concurrency(8)
        .build();
    let running = Running::start(&broker, consumer).await;

    let mut next_seq = [0u32; KEYS as usize];
    let items: Vec<(Item, bool)> = (0..MESSAGES)
        .map(|i| {
            let key = (i.wrapping_mul(2_246_822_519) >> 7) % KEYS;
            let seq = next_seq[key as usize];
            next_seq[key as usize] += 1;
            (Item { key, seq }, true)
        })
        .collect();
    publish_items(&broker, sub.topic(), &items).await;

    let metrics = running.metrics.clone();
    wait_for(
        &ctx,
        "10,000 handled messages",
        || total(&metrics.snapshot()),
        || metrics.snapshot().handled >= u64::from(MESSAGES),
    )
    .await;
    let stats = running.stop(&ctx).await;
    assert_eq!(stats.handled, u64::from(MESSAGES));
    assert_eq!((stats.failed, stats.dead_lettered), (0, 0));
    assert_eq!((stats.in_flight, stats.lanes_active), (0, 0));

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), KEYS as usize, "every key was handled");
    for (key, seqs) in seen.iter() {
        let expected: Vec<u32> = (0..next_seq[*key as usize]).collect();
        assert_eq!(seqs, &expected, "key {key}: each message once, in order");
    }
    let most = overlap.most.load(Ordering::SeqCst);
    assert!(most > 1, "handlers never overlapped (most at once: {most})");
    assert!(
        most <= 8,
        "more handlers at once ({most}) than the concurrency"
    );
    eprintln!("ordering: at most {most} handlers ran at once");

    let mut stream = subscribe(&broker, sub).await;
    ctx.expect_nothing(&mut stream).await;
    broker.close().await.expect("close");
}

async fn runtime_retries_with_growing_delays(ctx: Ctx) {
    const FAILURES: usize = 3;
    const BASE: Duration = Duration::from_millis(20);
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let handler = {
        let calls = calls.clone();
        runtime::raw(move |_message| {
            let calls = calls.clone();
            async move {
                let mut calls = calls.lock().expect("lock");
                calls.push(Instant::now());
                if calls.len() <= FAILURES {
                    Err(HandlerError::transient("not yet"))
                } else {
                    Ok(())
                }
            }
        })
    };
    // With jitter each delay lies in [d, 2d); a factor of 3 keeps every
    // delay above the previous one's range.
    let policy = RetryPolicy::exponential()
        .max_attempts(10)
        .min_delay(BASE)
        .factor(3.0);
    let consumer = Consumer::builder(&broker, sub.clone(), handler)
        .retry(policy)
        .build();
    let running = Running::start(&broker, consumer).await;
    broker
        .publish(sub.topic(), Message::new("flaky"))
        .await
        .expect("publish");
    let metrics = running.metrics.clone();
    wait_for(
        &ctx,
        "one handled message",
        || total(&metrics.snapshot()),
        || metrics.snapshot().handled == 1,
    )
    .await;
    let stats = running.stop(&ctx).await;
    assert_eq!(
        (
            stats.handled,
            stats.failed,
            stats.retried,
            stats.dead_lettered
        ),
        (1, 3, 3, 0)
    );
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), FAILURES + 1, "called k + 1 times");
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("retry gaps: {gaps:?}");
    let mut least = BASE;
    for (i, gap) in gaps.iter().enumerate() {
        assert!(
            *gap >= least,
            "gap {i} is {gap:?}, below the policy's {least:?}"
        );
        least *= 3;
    }
    assert!(
        gaps.windows(2).all(|w| w[1] > w[0]),
        "gaps must grow: {gaps:?}"
    );
    let mut stream = subscribe(&broker, sub).await;
    ctx.expect_nothing(&mut stream).await;
    broker.close().await.expect("close");
}

async fn runtime_retry_holds_the_key_lane(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let order: Arc<Mutex<Vec<u32>>> = Arc::default();
    let first_attempts = Arc::new(AtomicU32::new(0));
    let handler = {
        let (order, first_attempts) = (order.clone(), first_attempts.clone());
        runtime::typed(move |item: Item| {
            let (order, first_attempts) = (order.clone(), first_attempts.clone());
            async move {
                if item.seq == 0 && first_attempts.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err(HandlerError::transient("first message fails twice"));
                }
                order.lock().expect("lock").push(item.seq);
                Ok(())
            }
        })
    };
    let policy = RetryPolicy::exponential()
        .max_attempts(5)
        .min_delay(Duration::from_millis(10));
    let consumer = Consumer::builder(&broker, sub.clone(), handler)
        .concurrency(4)
        .retry(policy)
        .build();
    let running = Running::start(&broker, consumer).await;
    let items: Vec<(Item, bool)> = (0..20).map(|seq| (Item { key: 1, seq }, true)).collect();
    publish_items(&broker, sub.topic(), &items).await;
    let metrics = running.metrics.clone();
    wait_for(
        &ctx,
        "20 handled messages",
        || total(&metrics.snapshot()),
        || metrics.snapshot().handled == 20,
    )
    .await;
    let stats = running.stop(&ctx).await;
    assert_eq!((stats.handled, stats.failed, stats.retried), (20, 2, 2));
    assert_eq!(first_attempts.load(Ordering::SeqCst), 3);
    let order = order.lock().expect("lock").clone();
    assert_eq!(order, (0..20).collect::<Vec<_>>(), "later messages waited");
    broker.close().await.expect("close");
}

async fn runtime_dead_letters_after_the_last_attempt(ctx: Ctx) {
    const GOOD: u32 = 20;
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let dlq = Subscription::new(format!("{}.dlq", sub.topic()), ctx.name("dlq-reader"));
    broker.provision(&dlq).await.expect("provision dlq");
    let poison_calls = Arc::new(AtomicU32::new(0));
    let good_calls: Arc<Mutex<Vec<u32>>> = Arc::default();
    let handler = {
        let (poison_calls, good_calls) = (poison_calls.clone(), good_calls.clone());
        runtime::typed(move |item: Item| {
            let (poison_calls, good_calls) = (poison_calls.clone(), good_calls.clone());
            async move {
                if item.seq == u32::MAX {
                    poison_calls.fetch_add(1, Ordering::SeqCst);
                    Err(std::io::Error::other("payment service said no"))?;
                }
                good_calls.lock().expect("lock").push(item.seq);
                Ok(())
            }
        })
    };
    let policy = RetryPolicy::exponential()
        .max_attempts(3)
        .min_delay(Duration::from_millis(10));
    let consumer = Consumer::builder(&broker, sub.clone(), handler)
        .concurrency(4)
        .retry(policy)
        .build();
    let running = Running::start(&broker, consumer).await;
    // The poison message shares its key with half of the good ones, which
    // wait for it and then go on; the others do not wait at all.
    let poison = item_message(
        Item {
            key: 7,
            seq: u32::MAX,
        },
        true,
    );
    let poison_id = poison.id().clone();
    broker
        .publish(sub.topic(), poison)
        .await
        .expect("publish poison");
    let good: Vec<(Item, bool)> = (0..GOOD)
        .map(|seq| (Item { key: 7, seq }, seq % 2 == 0))
        .collect();
    publish_items(&broker, sub.topic(), &good).await;

    let metrics = running.metrics.clone();
    wait_for(
        &ctx,
        "20 handled and 1 dead-lettered",
        || total(&metrics.snapshot()),
        || {
            let s = metrics.snapshot();
            s.handled == u64::from(GOOD) && s.dead_lettered == 1
        },
    )
    .await;
    let stats = running.stop(&ctx).await;
    assert_eq!((stats.handled, stats.dead_lettered), (u64::from(GOOD), 1));
    assert_eq!((stats.failed, stats.retried), (3, 2));
    assert_eq!(poison_calls.load(Ordering::SeqCst), 3, "max attempts");
    let mut good_calls = good_calls.lock().expect("lock").clone();
    good_calls.sort_unstable();
    assert_eq!(
        good_calls,
        (0..GOOD).collect::<Vec<_>>(),
        "others once each"
    );

    let mut dead = subscribe(&broker, dlq).await;
    let d = ctx.next(&mut dead).await;
    let copy = d.message();
    assert_eq!(copy.id(), &poison_id);
    assert_eq!(copy.key(), Some("key-7"));
    assert_eq!(copy.header(DLQ_REASON), Some("payment service said no"));
    assert_eq!(copy.header(DLQ_ATTEMPTS), Some("3"));
    assert_eq!(copy.header(DLQ_ORIGINAL_TOPIC), Some(sub.topic()));
    assert_eq!(copy.header(DLQ_GROUP), Some(sub.group()));
    let millis = |name| -> u64 {
        copy.header(name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .parse()
            .expect("milliseconds")
    };
    let (first, last) = (millis(DLQ_FIRST_FAILURE), millis(DLQ_LAST_FAILURE));
    // Two backoffs of at least 10 and 20 ms lie between them (each time is
    // cut to whole milliseconds, hence one less).
    assert!(last >= first + 29, "first {first} ms, last {last} ms");
    d.ack().await.expect("ack");
    ctx.expect_nothing(&mut dead).await;
    let mut stream = subscribe(&broker, sub).await;
    ctx.expect_nothing(&mut stream).await;
    broker.close().await.expect("close");
}

async fn runtime_undecodable_payload_dead_letters_at_once(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let parking = Subscription::new(ctx.name("parking"), ctx.name("reader"));
    broker.provision(&parking).await.expect("provision");
    let handled = Arc::new(AtomicU32::new(0));
    let handler = {
        let handled = handled.clone();
        runtime::typed(move |_item: Item| {
            let handled = handled.clone();
            async move {
                handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    let consumer = Consumer::builder(&broker, sub.clone(), handler)
        .retry(RetryPolicy::exponential().max_attempts(5))
        .dead_letter_topic(parking.topic())
        .build();
    let running = Running::start(&broker, consumer).await;
    let garbage = Message::new("{ this is not json").with_content_type("application/json");
    let garbage_id = garbage.id().clone();
    broker.publish(sub.topic(), garbage).await.expect("publish");
    let good: Vec<(Item, bool)> = (0..5).map(|seq| (Item { key: 0, seq }, false)).collect();
    publish_items(&broker, sub.topic(), &good).await;

    let metrics = running.metrics.clone();
    wait_for(
        &ctx,
        "5 handled and 1 dead-lettered",
        || total(&metrics.snapshot()),
        || {
            let s = metrics.snapshot();
            s.handled == 5 && s.dead_lettered == 1
        },
    )
    .await;
    let stats = running.stop(&ctx).await;
    assert_eq!((stats.failed, stats.retried), (1, 0), "no retry");
    assert_eq!(handled.load(Ordering::SeqCst), 5);

    let mut dead = subscribe(&broker, parking).await;
    let d = ctx.next(&mut dead).await;
    assert_eq!(d.message().id(), &garbage_id);
    assert_eq!(d.message().header(DLQ_ATTEMPTS), Some("1"));
    assert_eq!(d.message().header(DLQ_ORIGINAL_TOPIC), Some(sub.topic()));
    let reason = d.message().header(DLQ_REASON).expect("reason");
    assert!(
        reason.starts_with("cannot decode message") && reason.contains("key must be a string"),
        "the reason names the failure and serde's cause: {reason}"
    );
    d.ack().await.expect("ack");
    broker.close().await.expect("close");
}

async fn runtime_panicking_handler_is_retried(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let attempts: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let handler = {
        let attempts = attempts.clone();
        runtime::typed(move |item: Item| {
            let attempts = attempts.clone();
            async move {
                let attempt = {
                    let mut attempts = attempts.lock().expect("lock");
                    let n = attempts.entry(item.seq).or_default();
                    *n += 1;
                    *n
                };
                if item.seq % 4 == 3 && attempt == 1 {
                    panic!("handler bug on message {}", item.seq);
                }
                Ok(())
            }
        })
    };
    let policy = RetryPolicy::exponential().min_delay(Duration::from_millis(5));
    let consumer = Consumer::builder(&broker, sub.clone(), handler)
        .concurrency(4)
        .retry(policy)
        .build();
    let running = Running::start(&broker, consumer).await;
    let first: Vec<(Item, bool)> = (0..12).map(|seq| (Item { key: 0, seq }, false)).collect();
    publish_items(&broker, sub.topic(), &first).await;
    let metrics = running.metrics.clone();
    wait_for(
        &ctx,
        "12 handled messages",
        || total(&metrics.snapshot()),
        || metrics.snapshot().handled == 12,
    )
    .await;
    // Still running after the panics.
    let later: Vec<(Item, bool)> = (12..16).map(|seq| (Item { key: 0, seq }, false)).collect();
    publish_items(&broker, sub.topic(), &later).await;
    wait_for(
        &ctx,
        "16 handled messages",
        || total(&metrics.snapshot()),
        || metrics.snapshot().handled == 16,
    )
    .await;
    let stats = running.stop(&ctx).await;
    assert_eq!(
        (
            stats.handled,
            stats.failed,
            stats.retried,
            stats.dead_lettered
        ),
        (16, 4, 4, 0)
    );
    let attempts = attempts.lock().expect("lock").clone();
    for seq in 0..16 {
        let expected = if seq % 4 == 3 { 2 } else { 1 };
        assert_eq!(attempts[&seq], expected, "attempts of message {seq}");
    }
    broker.close().await.expect("close");
}

/// Slow handlers that count how many started and finished.
#[derive(Default)]
struct SlowWork {
    started: AtomicU64,
    finished: Mutex<HashSet<MessageId>>,
}

impl SlowWork {
    /// A handler that takes `duration` per message, recording start and end.
    fn handler(self: &Arc<Self>, duration: Duration) -> impl runtime::Handler + use<> {
        let work = self.clone();
        runtime::raw(move |message| {
            let work = work.clone();
            async move {
                work.started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(duration).await;
                work.finished
                    .lock()
                    .expect("lock")
                    .insert(message.id().clone());
                Ok(())
            }
        })
    }

    /// Waits until `n` handlers have started.
    async fn wait_started(&self, ctx: &Ctx, n: u64) {
        wait_for(
            ctx,
            &format!("{n} running handlers"),
            || self.started.load(Ordering::SeqCst),
            || self.started.load(Ordering::SeqCst) >= n,
        )
        .await;
    }
}

/// Publishes `n` numbered messages and returns their ids.
async fn publish_numbered(broker: &Broker, topic: &str, n: usize) -> HashSet<MessageId> {
    let sent: Vec<Message> = (0..n).map(|i| Message::new(i.to_string())).collect();
    let ids = sent.iter().map(|m| m.id().clone()).collect();
    broker.publish_batch(topic, sent).await.expect("publish");
    ids
}

async fn runtime_shutdown_waits_for_in_flight_handlers(ctx: Ctx) {
    const IN_FLIGHT: u64 = 50;
    const PUBLISHED: usize = 60;
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let work = Arc::new(SlowWork::default());
    let handler = work.handler(Duration::from_millis(300));
    let consumer = Consumer::builder(&broker, sub.clone(), handler)
        .concurrency(IN_FLIGHT as usize)
        .shutdown_deadline(ctx.patience())
        .build();
    let running = Running::start(&broker, consumer).await;
    let all = publish_numbered(&broker, sub.topic(), PUBLISHED).await;
    work.wait_started(&ctx, IN_FLIGHT).await;
    let stats = running.stop(&ctx).await;
    let finished = work.finished.lock().expect("lock").clone();
    assert!(
        finished.len() >= IN_FLIGHT as usize,
        "shutdown waited for the running handlers: {} finished",
        finished.len()
    );
    assert_eq!(
        stats.handled,
        finished.len() as u64,
        "every finished one acked"
    );
    assert_eq!((stats.in_flight, stats.running), (0, 0));

    // The next consumer gets exactly the messages that were not handled.
    let next = ctx.broker().await;
    let mut stream = subscribe(&next, sub).await;
    let mut redelivered = HashSet::new();
    for _ in 0..PUBLISHED - finished.len() {
        let d = ctx.next(&mut stream).await;
        assert!(redelivered.insert(d.message().id().clone()), "duplicate");
        d.ack().await.expect("ack");
    }
    if let Ok(Some(extra)) =
        tokio::time::timeout(ctx.quiet(), futures::StreamExt::next(&mut stream)).await
    {
        let d = extra.expect("stream item");
        let id = d.message().id();
        panic!(
            "delivered once too often: message {:?} (payload {:?}, delivery count {:?}), {}",
            id,
            String::from_utf8_lossy(d.message().payload()),
            d.delivery_count(),
            if finished.contains(id) {
                "handled and acked before the shutdown"
            } else if redelivered.contains(id) {
                "already delivered to and acked by the next consumer"
            } else {
                "never seen before"
            }
        );
    }
    assert!(
        redelivered.is_disjoint(&finished),
        "completed work came back"
    );
    let covered: HashSet<MessageId> = finished.union(&redelivered).cloned().collect();
    assert_eq!(covered, all, "every message handled or given back");
    next.close().await.expect("close");
    broker.close().await.expect("close");
}

async fn runtime_shutdown_deadline_requeues_unfinished_work(ctx: Ctx) {
    const IN_FLIGHT: u64 = 50;
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let work = Arc::new(SlowWork::default());
    // Far longer than the deadline: only cancellation ends it.
    let handler = work.handler(Duration::from_secs(3600));
    let consumer = Consumer::builder(&broker, sub.clone(), handler)
        .concurrency(IN_FLIGHT as usize)
        .shutdown_deadline(Duration::from_millis(200))
        .build();
    let running = Running::start(&broker, consumer).await;
    let all = publish_numbered(&broker, sub.topic(), IN_FLIGHT as usize).await;
    work.wait_started(&ctx, IN_FLIGHT).await;
    let stats = running.stop(&ctx).await;
    assert_eq!((stats.handled, stats.requeued), (0, IN_FLIGHT));
    assert!(work.finished.lock().expect("lock").is_empty());

    // A new consumer handles every one of them.
    let next = ctx.broker().await;
    let seen: Arc<Mutex<HashSet<MessageId>>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        runtime::raw(move |message| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("lock").insert(message.id().clone());
                Ok(())
            }
        })
    };
    let consumer = Consumer::builder(&next, sub.clone(), handler).build();
    let running = Running::start(&next, consumer).await;
    let metrics = running.metrics.clone();
    wait_for(
        &ctx,
        "50 redelivered messages",
        || total(&metrics.snapshot()),
        || metrics.snapshot().handled >= IN_FLIGHT,
    )
    .await;
    let stats = running.stop(&ctx).await;
    assert_eq!(stats.handled, IN_FLIGHT);
    assert_eq!(*seen.lock().expect("lock"), all);
    next.close().await.expect("close");
    broker.close().await.expect("close");
}
