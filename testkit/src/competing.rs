//! Competing consumers: the members of one group share its messages.
//!
//! Two members subscribe to one group; each holds every delivery for
//! [`HOLD`] before it acks, so neither drains the group before the other
//! is served. Their prefetch ([`PREFETCH`]) is above the number of
//! messages, so the share comes from the broker, not from a prefetch that
//! caps each member: a broker that gave one member everything it may hold
//! fails. Every message must arrive exactly once, and each member must
//! get at least a third of them.
//!
//! Where a group is shared through partitions (Kafka) the case connects
//! with [`Ctx::partitioned_broker`], and the group is rebalanced as the
//! members join, which can take seconds. Before it publishes, the case
//! sends rounds of probe messages until both members have received one
//! in the same round: both are then assigned a part of the topic.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use courier_core::{Broker, DeliveryStream, Message, Subscription};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::deliveries::seq_of;
use crate::harness::Ctx;

/// Messages the members share.
const MESSAGES: usize = 200;
/// Each member's prefetch: more than [`MESSAGES`].
const PREFETCH: u16 = 256;
/// How long a member holds each delivery before it acks.
const HOLD: Duration = Duration::from_millis(5);
/// The fewest messages each member must get.
const FAIR_SHARE: usize = MESSAGES / 3;
/// Probe messages per round while waiting for both members to be assigned.
const PROBES_PER_ROUND: usize = 16;
/// Sequence numbers from here on are probes, not shared messages.
const FIRST_PROBE: usize = 1_000_000;
/// Pause between two probe rounds, so a slow rebalance is not flooded.
const PROBE_PAUSE: Duration = Duration::from_millis(250);

/// A delivery one member handled: the member and the sequence number.
type Handled = (usize, usize);

/// The case; see the [module docs](self).
pub(crate) async fn competing_consumers_share_the_group(ctx: Ctx) {
    let broker = ctx.partitioned_broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g")).prefetch(PREFETCH);
    // The group holds what is published before the members subscribe.
    broker.provision(&sub).await.expect("provision");
    let (handled_tx, mut handled) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let members: Vec<_> = (0..2)
        .map(|member| {
            let broker = broker.clone();
            let (sub, handled_tx, stop) = (sub.clone(), handled_tx.clone(), stop.clone());
            tokio::spawn(async move {
                let stream = broker.subscribe(sub).await.expect("subscribe");
                run_member(member, stream, handled_tx, stop).await
            })
        })
        .collect();
    drop(handled_tx);

    let mut probes = Probes::default();
    let warm_up = probes
        .until_both_assigned(&ctx, &broker, &sub, &mut handled)
        .await;

    publish_keyed(&broker, sub.topic(), 0..MESSAGES).await;
    let mut per_member = [0_usize; 2];
    let mut seen = Vec::with_capacity(MESSAGES);
    while seen.len() < MESSAGES || !probes.all_back() {
        let Ok(Some((member, seq))) = tokio::time::timeout(ctx.patience(), handled.recv()).await
        else {
            panic!(
                "no progress within {:?}: {} of {MESSAGES} received (split {per_member:?}), \
                 {} of {} probes",
                ctx.patience(),
                seen.len(),
                probes.seen.len(),
                probes.sent
            );
        };
        if seq >= FIRST_PROBE {
            probes.seen.insert(seq);
        } else {
            per_member[member] += 1;
            seen.push(seq);
        }
    }
    stop_tx.send(true).expect("members listen");
    let mut streams = Vec::new();
    for member in members {
        streams.push(member.await.expect("member task"));
    }
    for stream in &mut streams {
        ctx.expect_nothing(stream).await;
    }
    eprintln!(
        "{}: competing consumers: {MESSAGES} split {} / {} (each needs {FAIR_SHARE}); \
         both members assigned after {} probe rounds, {warm_up:.2?}",
        ctx.adapter().name(),
        per_member[0],
        per_member[1],
        probes.rounds
    );
    let mut sorted = seen;
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..MESSAGES).collect::<Vec<_>>(),
        "every message exactly once"
    );
    for (member, &count) in per_member.iter().enumerate() {
        assert!(
            count >= FAIR_SHARE,
            "member {member} got {count} of {MESSAGES} (split {per_member:?}): \
             not a fair share of a group whose other member was busy"
        );
    }
    drop(streams);
    broker.close().await.expect("close");
}

/// Receives, holds each delivery for [`HOLD`], acks, and reports it, until
/// told to stop; returns the stream for the final check.
async fn run_member(
    member: usize,
    mut stream: DeliveryStream,
    handled: mpsc::UnboundedSender<Handled>,
    mut stop: watch::Receiver<bool>,
) -> DeliveryStream {
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => return stream,
            next = stream.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => panic!("member {member}: stream error: {e} ({e:?})"),
            None => panic!("member {member}: the stream ended"),
        };
        let seq = seq_of(delivery.message());
        tokio::time::sleep(HOLD).await;
        delivery.ack().await.expect("ack");
        // The case stops listening only after it stopped the members.
        let _ = handled.send((member, seq));
    }
}

/// The probe rounds sent before the shared messages.
#[derive(Debug, Default)]
struct Probes {
    rounds: usize,
    sent: usize,
    seen: HashSet<usize>,
    /// Probes each member received.
    split: [usize; 2],
}

impl Probes {
    fn all_back(&self) -> bool {
        self.seen.len() == self.sent
    }

    /// Sends rounds of probes until both members receive one in the same
    /// round (within four times the adapter's patience); returns how long
    /// that took.
    async fn until_both_assigned(
        &mut self,
        ctx: &Ctx,
        broker: &Broker,
        sub: &Subscription,
        handled: &mut mpsc::UnboundedReceiver<Handled>,
    ) -> Duration {
        let started = Instant::now();
        let deadline = started + ctx.patience() * 4;
        loop {
            self.rounds += 1;
            let round = FIRST_PROBE + self.sent..FIRST_PROBE + self.sent + PROBES_PER_ROUND;
            self.sent += PROBES_PER_ROUND;
            publish_keyed(broker, sub.topic(), round.clone()).await;
            let mut members = [0_usize; 2];
            while !round.clone().all(|seq| self.seen.contains(&seq)) {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(Some((member, seq))) = tokio::time::timeout(left, handled.recv()).await
                else {
                    panic!(
                        "the two members did not both get messages within {:?}: {} probe rounds, \
                         {} of {} probes received, split {:?}",
                        ctx.patience() * 4,
                        self.rounds,
                        self.seen.len(),
                        self.sent,
                        self.split
                    );
                };
                assert!(seq >= FIRST_PROBE, "a shared message before any was sent");
                self.seen.insert(seq);
                members[member] += 1;
                self.split[member] += 1;
            }
            if members.iter().all(|&n| n > 0) {
                return started.elapsed();
            }
            tokio::time::sleep(PROBE_PAUSE).await;
        }
    }
}

/// Publishes the sequence numbers in `range`, each with a key of its own:
/// a partitioned topic spreads them over its partitions (without a key,
/// a Kafka producer may put a whole batch on one partition).
async fn publish_keyed(broker: &Broker, topic: &str, range: std::ops::Range<usize>) {
    let messages = range
        .map(|seq| Message::new(seq.to_string()).with_key(format!("key-{seq}")))
        .collect();
    broker
        .publish_batch(topic, messages)
        .await
        .expect("publish_batch");
}
