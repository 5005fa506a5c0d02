//! The leader of a group leaves right after the other member did, before
//! it rejoined: the next member must be given the partitions.
//!
//! This is what `concurrent_subscribe_and_close_loses_nothing` runs into at
//! random (members close while others join), made to happen every time:
//! two members share a two-partition topic, the one that did not form the
//! group leaves, and the leader leaves at once, well before its next
//! heartbeat (up to 3 s away) would have made it rejoin.
//!
//! Stock tansu 0.6 keeps a leader that left a re-forming group as its
//! leader, so no later member is ever given a partition; the test image
//! carries a fix (testkit/images/kafka/patches). Kafka's own coordinator
//! picks a new leader.

use std::time::{Duration, Instant};

use courier_core::prelude::*;
use courier_core::{Message, Subscription};
use courier_kafka::KafkaBroker;
use courier_testkit::deliveries::{next_within, seq_of};
use courier_testkit::fixtures::{self, unique_name};
use courier_testkit::log_lines::LogLines;

/// Group joins and rebalances on the test broker.
const JOIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_leaving_right_after_a_member_hands_the_partitions_over() {
    let lines = LogLines::capture("courier_kafka", tracing::Level::DEBUG);

    let server = fixtures::kafka().await.expect("kafka fixture");
    let url = format!("{}?partitions=2", server.url());
    let connect = || async { KafkaBroker::connect(&url).await.expect("connect") };
    let publisher = connect().await;
    let group = unique_name("churn-group");
    let in_group = format!("group={group}");
    let sub = Subscription::new(unique_name("churn"), group.clone());
    publisher.provision(&sub).await.expect("provision");

    // The first member forms the group, so it leads it, and is given both
    // partitions; once the second member joined, each has one.
    let leader = connect().await;
    let first = leader.subscribe(sub.clone()).await.expect("subscribe");
    lines
        .wait_for("kafka partition assigned", &in_group, 2, JOIN)
        .await;
    let member = connect().await;
    let second = member.subscribe(sub.clone()).await.expect("subscribe");
    lines
        .wait_for("kafka partition assigned", &in_group, 4, JOIN)
        .await;

    // The second member leaves, then the leader, before it rejoined.
    drop(second);
    member.close().await.expect("close");
    drop(first);
    leader.close().await.expect("close");

    let batch = (0..10).map(|i| Message::new(i.to_string()).with_key(format!("k{i}")));
    publisher
        .publish_batch(sub.topic(), batch.collect())
        .await
        .expect("publish");
    let next = connect().await;
    let mut third = next.subscribe(sub.clone()).await.expect("subscribe");
    let started = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let delivery = next_within(&mut third, JOIN).await;
        if seen.is_empty() {
            eprintln!(
                "the next member's first delivery after {:.1?}",
                started.elapsed()
            );
        }
        seen.push(seq_of(delivery.message()));
        delivery.ack().await.expect("ack");
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..10).collect::<Vec<_>>(), "every record once");
    drop(third);
    next.close().await.expect("close");
    publisher.close().await.expect("close");
}
