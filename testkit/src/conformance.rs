//! The conformance cases: the behaviour every adapter must show.
//!
//! They follow Watermill's universal Pub/Sub tests and add what courier
//! promises on top (nack never skipped, unsettled deliveries come back,
//! typed errors for bad input). Each case uses its own topics and groups.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use courier_core::delivery::{DLQ_GROUP, DLQ_ORIGINAL_TOPIC, DLQ_REASON};
use courier_core::{
    Broker, DeliveryStream, Error, Message, MessageId, Nack, StartPosition, Subscription,
};
use futures::future::join_all;
use tokio::sync::Mutex;

use crate::competing::competing_consumers_share_the_group;
use crate::deliveries::seq_of;
use crate::harness::{Capability, Case, Ctx};

macro_rules! case {
    ($name:ident) => {
        Case::new(stringify!($name), &[], |ctx| Box::pin($name(ctx)))
    };
    ($name:ident, needs $($cap:ident),+) => {
        Case::new(stringify!($name), &[$(Capability::$cap),+], |ctx| Box::pin($name(ctx)))
    };
}

/// Every conformance case.
pub fn cases() -> Vec<Case> {
    vec![
        case!(publish_subscribe),
        case!(headers_unicode_and_empty_values),
        case!(payload_of_one_mebibyte),
        case!(invalid_topic_name_is_a_typed_error),
        case!(publish_batch_keeps_order),
        case!(concurrent_publishers_and_subscribers),
        case!(many_topics),
        case!(topic_isolation),
        case!(consumer_groups_each_get_everything),
        case!(look_alike_names_are_never_merged),
        case!(competing_consumers_share_the_group),
        case!(redelivery_after_nack),
        case!(delivery_count_grows, needs DeliveryCount),
        case!(requeue_after_delay_comes_back),
        case!(prefetch_one_holds_back_the_next_message),
        case!(dropped_ack_futures_do_not_hold_the_subscription),
        case!(close_mid_stream_loses_nothing),
        case!(concurrent_subscribe_and_close_loses_nothing),
        case!(per_key_order_is_kept),
        case!(provisioned_group_keeps_messages),
        case!(new_group_sees_history, needs History),
        case!(latest_group_sees_only_new_messages),
        case!(dropped_stream_loses_nothing),
        case!(dropped_delivery_comes_back),
        case!(nack_is_not_skipped_by_a_later_ack),
        case!(dead_letter_nack_moves_the_message),
        case!(close_is_idempotent_and_ends_streams),
        case!(restart_under_load_loses_nothing, needs Restart),
    ]
}

fn seq_message(i: usize) -> Message {
    Message::new(i.to_string())
}

async fn publish_seq(broker: &Broker, topic: &str, range: std::ops::Range<usize>) {
    broker
        .publish_batch(topic, range.map(seq_message).collect())
        .await
        .expect("publish_batch");
}

async fn subscribe(broker: &Broker, sub: Subscription) -> DeliveryStream {
    broker.subscribe(sub).await.expect("subscribe")
}

/// Receives `n` deliveries, acks each, returns their sequence numbers in order.
async fn take_acked(ctx: &Ctx, stream: &mut DeliveryStream, n: usize) -> Vec<usize> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        let d = ctx.next(stream).await;
        seen.push(seq_of(d.message()));
        d.ack().await.expect("ack");
    }
    seen
}

fn assert_exactly(seen: &[usize], expected: std::ops::Range<usize>) {
    let mut sorted = seen.to_vec();
    sorted.sort_unstable();
    let want: Vec<usize> = expected.collect();
    assert_eq!(sorted.len(), want.len(), "count of received messages");
    assert_eq!(sorted, want, "received set (sorted)");
}

async fn publish_subscribe(ctx: Ctx) {
    let broker = ctx.broker().await;
    let (topic, group) = (ctx.name("t"), ctx.name("g"));
    let mut stream = subscribe(&broker, Subscription::new(&topic, &group)).await;
    let sent = Message::new("hello, courier")
        .with_key("key-1")
        .with_content_type("text/plain")
        .with_header("tenant", "acme")
        .unwrap()
        .with_correlation_id("corr-1")
        .unwrap()
        .with_causation_id("cause-1")
        .unwrap();
    broker.publish(&topic, sent.clone()).await.expect("publish");
    let d = ctx.next(&mut stream).await;
    assert_eq!(d.topic(), topic);
    let got = d.message().clone();
    assert_eq!(got.id(), sent.id());
    assert_eq!(got.payload(), sent.payload());
    assert_eq!(got.key(), Some("key-1"));
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(got.timestamp(), sent.timestamp());
    assert_eq!(got.correlation_id(), Some("corr-1"));
    assert_eq!(got.causation_id(), Some("cause-1"));
    assert_eq!(
        got.headers().user().collect::<Vec<_>>(),
        vec![("tenant", "acme")]
    );
    assert_eq!(got, sent, "the whole message round-trips");
    d.ack().await.expect("ack");
    ctx.expect_nothing(&mut stream).await;
    broker.close().await.expect("close");
}

async fn headers_unicode_and_empty_values(ctx: Ctx) {
    let broker = ctx.broker().await;
    let (topic, group) = (ctx.name("t"), ctx.name("g"));
    let mut stream = subscribe(&broker, Subscription::new(&topic, &group)).await;
    let sent = Message::new(Vec::new())
        .with_header("empty", "")
        .unwrap()
        .with_header("unicode", "Grüße, 世界 ✓ 🚀")
        .unwrap()
        .with_header("spaces", "  padded  ")
        .unwrap();
    broker.publish(&topic, sent.clone()).await.expect("publish");
    let d = ctx.next(&mut stream).await;
    assert_eq!(d.message().header("empty"), Some(""));
    assert_eq!(d.message().header("unicode"), Some("Grüße, 世界 ✓ 🚀"));
    assert_eq!(d.message().header("spaces"), Some("  padded  "));
    assert!(d.message().payload().is_empty());
    assert_eq!(d.message(), &sent);
    d.ack().await.expect("ack");
    broker.close().await.expect("close");
}

async fn payload_of_one_mebibyte(ctx: Ctx) {
    let broker = ctx.broker().await;
    let (topic, group) = (ctx.name("t"), ctx.name("g"));
    let mut stream = subscribe(&broker, Subscription::new(&topic, &group)).await;
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    let sent = Message::new(payload.clone());
    broker
        .publish(&topic, sent.clone())
        .await
        .expect("publish 1 MiB");
    let d = ctx.next(&mut stream).await;
    assert_eq!(d.message().payload().len(), payload.len());
    assert!(
        d.message().payload() == &payload[..],
        "payload bytes differ"
    );
    d.ack().await.expect("ack");
    broker.close().await.expect("close");
}

async fn invalid_topic_name_is_a_typed_error(ctx: Ctx) {
    let broker = ctx.broker().await;
    for bad in ["", "has space", "wild*card", "tail>", "a..b", ".lead"] {
        let err = broker
            .publish(bad, Message::new("x"))
            .await
            .expect_err("publishing to an invalid topic must fail");
        assert!(matches!(err, Error::InvalidName(_)), "{bad:?}: {err:?}");
        let err = broker
            .subscribe(Subscription::new(bad, ctx.name("g")))
            .await
            .err()
            .expect("subscribing to an invalid topic must fail");
        assert!(matches!(err, Error::InvalidName(_)), "{bad:?}: {err:?}");
    }
    let err = broker
        .subscribe(Subscription::new(ctx.name("t"), "bad group"))
        .await
        .err()
        .expect("an invalid group must fail");
    assert!(matches!(err, Error::InvalidName(_)), "{err:?}");
    broker.close().await.expect("close");
}

async fn publish_batch_keeps_order(ctx: Ctx) {
    let broker = ctx.broker().await;
    let (topic, group) = (ctx.name("t"), ctx.name("g"));
    let mut stream = subscribe(&broker, Subscription::new(&topic, &group)).await;
    let batch: Vec<Message> = (0..200)
        .map(|i| seq_message(i).with_key("one-key"))
        .collect();
    broker
        .publish_batch(&topic, batch)
        .await
        .expect("publish_batch");
    let seen = take_acked(&ctx, &mut stream, 200).await;
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
    broker.close().await.expect("close");
}

async fn concurrent_publishers_and_subscribers(ctx: Ctx) {
    const PUBLISHERS: usize = 10;
    const PER_PUBLISHER: usize = 100;
    const TOTAL: usize = PUBLISHERS * PER_PUBLISHER;
    let broker = ctx.broker().await;
    let (topic, group) = (ctx.name("t"), ctx.name("g"));
    let sub = Subscription::new(&topic, &group);
    broker.provision(&sub).await.expect("provision");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(AtomicUsize::new(0));
    let mut consumers = Vec::new();
    for _ in 0..3 {
        let consumer_broker = ctx.broker().await;
        let mut stream = subscribe(&consumer_broker, sub.clone()).await;
        let (seen, received, ctx) = (seen.clone(), received.clone(), ctx.clone());
        consumers.push(tokio::spawn(async move {
            while received.load(Ordering::SeqCst) < TOTAL {
                let Ok(Some(Ok(d))) =
                    tokio::time::timeout(ctx.quiet(), futures::StreamExt::next(&mut stream)).await
                else {
                    continue;
                };
                seen.lock().await.push(seq_of(d.message()));
                d.ack().await.expect("ack");
                received.fetch_add(1, Ordering::SeqCst);
            }
            consumer_broker.close().await.expect("close");
        }));
    }
    let publishers = (0..PUBLISHERS).map(|p| {
        let broker = broker.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for i in 0..PER_PUBLISHER {
                broker
                    .publish(&topic, seq_message(p * PER_PUBLISHER + i))
                    .await
                    .expect("publish");
            }
        })
    });
    for p in join_all(publishers).await {
        p.expect("publisher task");
    }
    let wait = tokio::time::timeout(ctx.patience() * 4, join_all(consumers)).await;
    let seen = seen.lock().await.clone();
    assert!(wait.is_ok(), "only {} of {TOTAL} received", seen.len());
    assert_exactly(&seen, 0..TOTAL);
    broker.close().await.expect("close");
}

async fn many_topics(ctx: Ctx) {
    const TOPICS: usize = 20;
    const PER_TOPIC: usize = 10;
    let broker = ctx.broker().await;
    let group = ctx.name("g");
    let mut streams = Vec::new();
    for t in 0..TOPICS {
        let topic = ctx.name(&format!("t{t}"));
        streams.push((
            topic.clone(),
            subscribe(&broker, Subscription::new(&topic, &group)).await,
        ));
    }
    let publishes = streams
        .iter()
        .map(|(topic, _)| publish_seq(&broker, topic, 0..PER_TOPIC));
    join_all(publishes).await;
    for (_, stream) in &mut streams {
        let seen = take_acked(&ctx, stream, PER_TOPIC).await;
        assert_exactly(&seen, 0..PER_TOPIC);
    }
    for (_, stream) in &mut streams {
        ctx.expect_nothing(stream).await;
    }
    broker.close().await.expect("close");
}

async fn topic_isolation(ctx: Ctx) {
    let broker = ctx.broker().await;
    let (a, b, group) = (ctx.name("a"), ctx.name("b"), ctx.name("g"));
    let mut stream_a = subscribe(&broker, Subscription::new(&a, &group)).await;
    let mut stream_b = subscribe(&broker, Subscription::new(&b, &group)).await;
    publish_seq(&broker, &a, 0..5).await;
    assert_exactly(&take_acked(&ctx, &mut stream_a, 5).await, 0..5);
    ctx.expect_nothing(&mut stream_b).await;
    broker.close().await.expect("close");
}

async fn consumer_groups_each_get_everything(ctx: Ctx) {
    const N: usize = 100;
    let broker = ctx.broker().await;
    let topic = ctx.name("t");
    let mut streams = Vec::new();
    for g in 0..3 {
        let sub = Subscription::new(&topic, ctx.name(&format!("g{g}")));
        streams.push(subscribe(&broker, sub).await);
    }
    publish_seq(&broker, &topic, 0..N).await;
    for stream in &mut streams {
        assert_exactly(&take_acked(&ctx, stream, N).await, 0..N);
        ctx.expect_nothing(stream).await;
    }
    broker.close().await.expect("close");
}

/// Names that a broker's naming could map to one queue or consumer
/// (`.` joins topic and group in some, `.` becomes `_` in others) either
/// stay apart, each group getting exactly its own topic's messages, or the
/// second is refused with a typed `Conflict` error. Never merged.
async fn look_alike_names_are_never_merged(ctx: Ctx) {
    const N: usize = 5;
    let broker = ctx.broker().await;
    let base = ctx.name("t");
    // (topic, group) pairs whose `<topic>.<group>` is the same, and two
    // groups of one topic whose names differ only in `.` and `_`.
    let pairs = [
        (format!("{base}.eu"), "billing".to_owned()),
        (base.clone(), "eu.billing".to_owned()),
        (base.clone(), "audit.log".to_owned()),
        (base.clone(), "audit_log".to_owned()),
    ];
    let mut streams = Vec::new();
    let mut refused = 0;
    for (topic, group) in &pairs {
        let sub = Subscription::new(topic.clone(), group.clone());
        match broker.provision(&sub).await {
            Ok(()) => streams.push((topic.clone(), subscribe(&broker, sub).await)),
            Err(e @ courier_core::Error::Broker { .. })
                if e.broker_kind() == Some(courier_core::BrokerErrorKind::Conflict) =>
            {
                eprintln!("look-alike: {topic}/{group} refused: {e}");
                refused += 1;
            }
            Err(e) => panic!("provision {topic}/{group}: {e} ({e:?})"),
        }
    }
    // The first two pairs must never be refused: different topics.
    assert!(streams.len() >= 3, "only {} of 4 subscribed", streams.len());
    publish_seq(&broker, &format!("{base}.eu"), 0..N).await;
    publish_seq(&broker, &base, 100..100 + N).await;
    for (topic, stream) in &mut streams {
        let expected = if *topic == base { 100..100 + N } else { 0..N };
        let mut seen = Vec::new();
        while seen.len() < N {
            let d = ctx.next(stream).await;
            seen.push(seq_of(d.message()));
            d.ack().await.expect("ack");
        }
        assert_exactly(&seen, expected);
        ctx.expect_nothing(stream).await;
    }
    eprintln!(
        "look-alike: {} subscribed, {refused} refused",
        streams.len()
    );
    broker.close().await.expect("close");
}

async fn redelivery_after_nack(ctx: Ctx) {
    const MESSAGES: usize = 3;
    const NACKS: usize = 10;
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let mut stream = subscribe(&broker, sub.clone()).await;
    publish_seq(&broker, sub.topic(), 0..MESSAGES).await;
    let mut nacks: HashMap<usize, usize> = HashMap::new();
    let mut acked = Vec::new();
    while acked.len() < MESSAGES {
        let d = ctx.next(&mut stream).await;
        let seq = seq_of(d.message());
        let count = nacks.entry(seq).or_default();
        if *count < NACKS {
            *count += 1;
            d.nack(Nack::Requeue).await.expect("nack");
        } else {
            acked.push(seq);
            d.ack().await.expect("ack");
        }
    }
    assert_exactly(&acked, 0..MESSAGES);
    assert!(nacks.values().all(|&n| n == NACKS), "{nacks:?}");
    ctx.expect_nothing(&mut stream).await;
    broker.close().await.expect("close");
}

async fn delivery_count_grows(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let mut stream = subscribe(&broker, sub.clone()).await;
    publish_seq(&broker, sub.topic(), 0..1).await;
    for expected in 1..=4 {
        let d = ctx.next(&mut stream).await;
        assert_eq!(d.delivery_count(), Some(expected));
        assert_eq!(d.redelivered(), expected > 1);
        if expected < 4 {
            d.nack(Nack::Requeue).await.expect("nack");
        } else {
            d.ack().await.expect("ack");
        }
    }
    broker.close().await.expect("close");
}

async fn requeue_after_delay_comes_back(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let mut stream = subscribe(&broker, sub.clone()).await;
    publish_seq(&broker, sub.topic(), 0..2).await;
    let first = ctx.next(&mut stream).await;
    assert_eq!(seq_of(first.message()), 0);
    let id = first.message().id().clone();
    let delay = Duration::from_millis(200);
    let nacked = std::time::Instant::now();
    first
        .nack(Nack::RequeueAfter(delay))
        .await
        .expect("nack with delay");
    let mut acked = Vec::new();
    while acked.len() < 2 {
        let d = ctx.next(&mut stream).await;
        if seq_of(d.message()) == 0 {
            assert_eq!(d.message().id(), &id, "the same message comes back");
            // A lower bound only: a busy machine makes it later, never earlier.
            let back = nacked.elapsed();
            assert!(
                back >= delay,
                "came back after {back:?}, asked for {delay:?}"
            );
        }
        acked.push(seq_of(d.message()));
        d.ack().await.expect("ack");
    }
    assert_exactly(&acked, 0..2);
    ctx.expect_nothing(&mut stream).await;
    broker.close().await.expect("close");
}

async fn prefetch_one_holds_back_the_next_message(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g")).prefetch(1);
    let mut stream = subscribe(&broker, sub.clone()).await;
    publish_seq(&broker, sub.topic(), 0..3).await;
    for expected in 0..3 {
        let d = ctx.next(&mut stream).await;
        assert_eq!(seq_of(d.message()), expected);
        ctx.expect_nothing(&mut stream).await;
        d.ack().await.expect("ack");
    }
    broker.close().await.expect("close");
}

/// A caller may drop an ack's future once it has started (a timeout or a
/// `select!` around it): the ack then may or may not reach the broker, and
/// at worst the message comes back ([`courier_core::Delivery::ack`]). It
/// must not keep the delivery's place in the prefetch window: with a
/// prefetch of 2 and every first ack dropped after one poll, all 6
/// messages still arrive.
async fn dropped_ack_futures_do_not_hold_the_subscription(ctx: Ctx) {
    const N: usize = 6;
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g")).prefetch(2);
    let mut stream = subscribe(&broker, sub.clone()).await;
    publish_seq(&broker, sub.topic(), 0..N).await;
    let mut seen = HashSet::new();
    let mut dropped = 0;
    while seen.len() < N {
        let d = ctx.next(&mut stream).await;
        if seen.insert(seq_of(d.message())) {
            let mut ack = std::pin::pin!(d.ack());
            if futures::poll!(ack.as_mut()).is_pending() {
                dropped += 1;
            }
        } else {
            // A message whose dropped ack did not reach the broker.
            d.ack().await.expect("ack");
        }
    }
    eprintln!("{dropped} of {N} acks dropped while they waited");
    broker.close().await.expect("close");
}

async fn close_mid_stream_loses_nothing(ctx: Ctx) {
    const N: usize = 100;
    const BEFORE_CLOSE: usize = 30;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g")).prefetch(20);
    let publisher = ctx.broker().await;
    publisher.provision(&sub).await.expect("provision");
    publish_seq(&publisher, sub.topic(), 0..N).await;

    let first = ctx.broker().await;
    let mut stream = subscribe(&first, sub.clone()).await;
    let early = take_acked(&ctx, &mut stream, BEFORE_CLOSE).await;
    // One more is received but left unsettled when the consumer closes.
    let unsettled = ctx.next(&mut stream).await;
    first.close().await.expect("close");
    drop(unsettled);
    drop(stream);

    let second = ctx.broker().await;
    let mut stream = subscribe(&second, sub.clone()).await;
    let late = take_acked(&ctx, &mut stream, N - BEFORE_CLOSE).await;
    ctx.expect_nothing(&mut stream).await;
    let all: Vec<usize> = early.iter().chain(&late).copied().collect();
    assert_exactly(&all, 0..N);
    second.close().await.expect("close");
    publisher.close().await.expect("close");
}

async fn concurrent_subscribe_and_close_loses_nothing(ctx: Ctx) {
    const N: usize = 300;
    const ROUNDS: usize = 6;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g")).prefetch(16);
    let publisher = ctx.broker().await;
    publisher.provision(&sub).await.expect("provision");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let publishing = {
        let publisher = publisher.clone();
        let topic = sub.topic().to_owned();
        tokio::spawn(async move {
            for chunk in 0..10 {
                publish_seq(&publisher, &topic, chunk * 30..(chunk + 1) * 30).await;
            }
        })
    };
    let rounds = (0..ROUNDS).map(|_| {
        let (ctx, sub, acked) = (ctx.clone(), sub.clone(), acked.clone());
        tokio::spawn(async move {
            let broker = ctx.broker().await;
            let mut stream = subscribe(&broker, sub).await;
            for _ in 0..10 {
                let Ok(Some(Ok(d))) =
                    tokio::time::timeout(ctx.quiet(), futures::StreamExt::next(&mut stream)).await
                else {
                    break;
                };
                let seq = seq_of(d.message());
                d.ack().await.expect("ack");
                acked.lock().await.push(seq);
            }
            // Leave one unsettled, then close abruptly.
            let pending =
                tokio::time::timeout(ctx.quiet(), futures::StreamExt::next(&mut stream)).await;
            broker.close().await.expect("close");
            drop(pending);
        })
    });
    for r in join_all(rounds).await {
        r.expect("round task");
    }
    publishing.await.expect("publisher task");
    let drain = ctx.broker().await;
    let mut stream = subscribe(&drain, sub.clone()).await;
    let already = acked.lock().await.len();
    // The first delivery waits for the group to settle after the churn,
    // which a slow broker may take long over (the join is printed).
    let started = std::time::Instant::now();
    let first = crate::deliveries::next_within(&mut stream, ctx.patience() * 5).await;
    eprintln!(
        "concurrent subscribe and close: the last member's first delivery after {:.1?}",
        started.elapsed()
    );
    let mut rest = vec![seq_of(first.message())];
    first.ack().await.expect("ack");
    rest.extend(take_acked(&ctx, &mut stream, N - already - 1).await);
    ctx.expect_nothing(&mut stream).await;
    let mut all = acked.lock().await.clone();
    all.extend(rest);
    assert_exactly(&all, 0..N);
    drain.close().await.expect("close");
    publisher.close().await.expect("close");
}

async fn per_key_order_is_kept(ctx: Ctx) {
    const KEYS: usize = 5;
    const PER_KEY: usize = 100;
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let mut stream = subscribe(&broker, sub.clone()).await;
    let messages: Vec<Message> = (0..KEYS * PER_KEY)
        .map(|i| seq_message(i).with_key(format!("key-{}", i % KEYS)))
        .collect();
    for chunk in messages.chunks(50) {
        broker
            .publish_batch(sub.topic(), chunk.to_vec())
            .await
            .expect("publish_batch");
    }
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for _ in 0..KEYS * PER_KEY {
        let d = ctx.next(&mut stream).await;
        let key = d.message().key().expect("key kept").to_owned();
        per_key.entry(key).or_default().push(seq_of(d.message()));
        d.ack().await.expect("ack");
    }
    assert_eq!(per_key.len(), KEYS);
    for (key, seqs) in &per_key {
        let k: usize = key.trim_start_matches("key-").parse().expect("key number");
        let want: Vec<usize> = (0..PER_KEY).map(|i| i * KEYS + k).collect();
        assert_eq!(seqs, &want, "order of {key}");
    }
    broker.close().await.expect("close");
}

async fn provisioned_group_keeps_messages(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    broker.provision(&sub).await.expect("provision");
    broker
        .provision(&sub)
        .await
        .expect("provision is idempotent");
    publish_seq(&broker, sub.topic(), 0..10).await;
    let mut stream = subscribe(&broker, sub).await;
    assert_exactly(&take_acked(&ctx, &mut stream, 10).await, 0..10);
    ctx.expect_nothing(&mut stream).await;
    broker.close().await.expect("close");
}

async fn new_group_sees_history(ctx: Ctx) {
    let broker = ctx.broker().await;
    let topic = ctx.name("t");
    let early = Subscription::new(&topic, ctx.name("early"));
    broker.provision(&early).await.expect("provision");
    publish_seq(&broker, &topic, 0..10).await;
    let late = Subscription::new(&topic, ctx.name("late")).start_from(StartPosition::Earliest);
    let mut stream = subscribe(&broker, late).await;
    assert_exactly(&take_acked(&ctx, &mut stream, 10).await, 0..10);
    broker.close().await.expect("close");
}

async fn latest_group_sees_only_new_messages(ctx: Ctx) {
    let broker = ctx.broker().await;
    let topic = ctx.name("t");
    let early = Subscription::new(&topic, ctx.name("early"));
    broker.provision(&early).await.expect("provision");
    publish_seq(&broker, &topic, 0..5).await;
    let late = Subscription::new(&topic, ctx.name("late")).start_from(StartPosition::Latest);
    let mut stream = subscribe(&broker, late).await;
    publish_seq(&broker, &topic, 5..10).await;
    assert_exactly(&take_acked(&ctx, &mut stream, 5).await, 5..10);
    ctx.expect_nothing(&mut stream).await;
    broker.close().await.expect("close");
}

async fn dropped_stream_loses_nothing(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g")).prefetch(5);
    let mut stream = subscribe(&broker, sub.clone()).await;
    publish_seq(&broker, sub.topic(), 0..20).await;
    let first = take_acked(&ctx, &mut stream, 3).await;
    drop(stream);
    let mut stream = subscribe(&broker, sub).await;
    let rest = take_acked(&ctx, &mut stream, 17).await;
    ctx.expect_nothing(&mut stream).await;
    let all: Vec<usize> = first.into_iter().chain(rest).collect();
    assert_exactly(&all, 0..20);
    broker.close().await.expect("close");
}

async fn dropped_delivery_comes_back(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g")).prefetch(1);
    let mut stream = subscribe(&broker, sub.clone()).await;
    publish_seq(&broker, sub.topic(), 0..1).await;
    let d = ctx.next(&mut stream).await;
    let id = d.message().id().clone();
    drop(d);
    let again = ctx.next(&mut stream).await;
    assert_eq!(again.message().id(), &id);
    if ctx.adapter().has(Capability::DeliveryCount) {
        assert_eq!(again.delivery_count(), Some(2));
    }
    again.ack().await.expect("ack");
    ctx.expect_nothing(&mut stream).await;
    broker.close().await.expect("close");
}

async fn nack_is_not_skipped_by_a_later_ack(ctx: Ctx) {
    let sub = Subscription::new(ctx.name("t"), ctx.name("g")).prefetch(10);
    let first = ctx.broker().await;
    let mut stream = subscribe(&first, sub.clone()).await;
    publish_seq(&first, sub.topic(), 0..2).await;
    let a = ctx.next(&mut stream).await;
    let b = ctx.next(&mut stream).await;
    assert_eq!((seq_of(a.message()), seq_of(b.message())), (0, 1));
    let a_id: MessageId = a.message().id().clone();
    a.nack(Nack::Requeue).await.expect("nack");
    b.ack().await.expect("ack");
    first.close().await.expect("close");
    drop(stream);

    let second = ctx.broker().await;
    let mut stream = subscribe(&second, sub).await;
    let d = ctx.next(&mut stream).await;
    assert_eq!(d.message().id(), &a_id, "the nacked message comes back");
    d.ack().await.expect("ack");
    ctx.expect_nothing(&mut stream).await;
    second.close().await.expect("close");
}

async fn dead_letter_nack_moves_the_message(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let dlq = Subscription::new(format!("{}.dlq", sub.topic()), ctx.name("dlq-reader"));
    broker.provision(&dlq).await.expect("provision dlq");
    let mut stream = subscribe(&broker, sub.clone()).await;
    publish_seq(&broker, sub.topic(), 0..2).await;
    let poison = ctx.next(&mut stream).await;
    let poison_id = poison.message().id().clone();
    poison
        .nack(Nack::dead_letter("cannot handle this"))
        .await
        .expect("dead-letter nack");
    let good = ctx.next(&mut stream).await;
    assert_eq!(seq_of(good.message()), 1);
    good.ack().await.expect("ack");
    ctx.expect_nothing(&mut stream).await;

    let mut dead = subscribe(&broker, dlq).await;
    let d = ctx.next(&mut dead).await;
    assert_eq!(d.message().id(), &poison_id);
    assert_eq!(seq_of(d.message()), 0);
    assert_eq!(d.message().header(DLQ_REASON), Some("cannot handle this"));
    assert_eq!(d.message().header(DLQ_ORIGINAL_TOPIC), Some(sub.topic()));
    assert_eq!(d.message().header(DLQ_GROUP), Some(sub.group()));
    d.ack().await.expect("ack");
    broker.close().await.expect("close");
}

async fn close_is_idempotent_and_ends_streams(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    let mut stream = subscribe(&broker, sub.clone()).await;
    // The stream works before the close: one that never delivered would
    // end the same way.
    publish_seq(&broker, sub.topic(), 0..1).await;
    assert_exactly(&take_acked(&ctx, &mut stream, 1).await, 0..1);
    broker.close().await.expect("close");
    broker.close().await.expect("second close");
    let end = tokio::time::timeout(ctx.patience(), futures::StreamExt::next(&mut stream)).await;
    assert!(matches!(end, Ok(None)), "stream must end after close");
    let err = broker
        .publish(sub.topic(), Message::new("late"))
        .await
        .expect_err("publish after close fails");
    assert!(matches!(err, Error::Closed(_)), "{err:?}");
}

async fn restart_under_load_loses_nothing(ctx: Ctx) {
    const PUBLISHERS: usize = 10;
    // Publishes confirmed before the restart and again after it: a run in
    // which every publish failed would lose nothing and pass.
    const PROGRESS: usize = 50;
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    broker.provision(&sub).await.expect("provision");
    let confirmed = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (broker, topic, confirmed, stop) = (
                broker.clone(),
                sub.topic().to_owned(),
                confirmed.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let seq = i * PUBLISHERS + p;
                    if broker.publish(&topic, seq_message(seq)).await.is_ok() {
                        confirmed.lock().await.insert(seq);
                    }
                    // Spread the load so the restart lands mid-stream.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let confirmed_count = || {
        let confirmed = confirmed.clone();
        async move { confirmed.lock().await.len() }
    };
    wait_for_count(
        &ctx,
        "confirmed before the restart",
        PROGRESS,
        confirmed_count,
    )
    .await;
    ctx.restart_broker().await;
    let at_restart = confirmed_count().await;
    wait_for_count(
        &ctx,
        "confirmed after the restart",
        at_restart + PROGRESS,
        confirmed_count,
    )
    .await;
    stop.store(true, Ordering::Release);
    for p in join_all(publishers).await {
        p.expect("publisher task");
    }
    let confirmed = confirmed.lock().await.clone();
    let mut stream = subscribe(&broker, sub).await;
    let mut received = HashSet::new();
    while !confirmed.is_subset(&received) {
        match tokio::time::timeout(ctx.patience(), futures::StreamExt::next(&mut stream)).await {
            Ok(Some(Ok(d))) => {
                received.insert(seq_of(d.message()));
                d.ack().await.expect("ack");
            }
            Ok(Some(Err(e))) => panic!("stream error after restart: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    let lost = confirmed.difference(&received).count();
    eprintln!(
        "{}: restart under load: {} publishes confirmed ({at_restart} by the end of the \
         restart), {} received, {lost} lost",
        ctx.adapter().name(),
        confirmed.len(),
        received.len()
    );
    assert_eq!(lost, 0);
    broker.close().await.expect("close");
}

/// Waits until `count` reaches `target`, failing the case after four
/// times the adapter's patience (a restart may be in it).
async fn wait_for_count<F, Fut>(ctx: &Ctx, what: &str, target: usize, count: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let deadline = std::time::Instant::now() + ctx.patience() * 4;
    loop {
        let now = count().await;
        if now >= target {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {now} of {target} within {:?}",
            ctx.patience() * 4
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
