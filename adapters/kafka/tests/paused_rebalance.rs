//! A subscription whose application stopped taking records has its
//! fetching paused; a rebalance in the middle of draining that buffer must
//! not leave the partition paused for good (librdkafka keeps a partition
//! paused by the application paused when the group gives it back).
//!
//! The test reads the adapter's debug lines to know when fetching was
//! paused and when the group gave the partition out again.

use courier_core::prelude::*;
use std::time::Duration;

use courier_core::{Message, Subscription};
use courier_kafka::KafkaBroker;
use courier_testkit::deliveries::{next_within, seq_of};
use courier_testkit::fixtures::{self, unique_name};
use courier_testkit::log_lines::LogLines;

const MESSAGES: usize = 300;
/// High water 64 records, low water 32 (see `Flow::high_water`).
const PREFETCH: u16 = 16;
/// Taken before the rebalance: leaves the buffer between its low and high
/// water, where fetching stays paused until the low water is reached.
const TAKEN_FIRST: usize = 20;
/// Group joins and rebalances on the test broker.
const JOIN: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_given_back_while_paused_is_fetched_again() {
    let lines = LogLines::capture("courier_kafka", tracing::Level::DEBUG);

    let server = fixtures::kafka().await.expect("kafka fixture");
    let broker = KafkaBroker::connect(server.url()).await.expect("connect");
    let group = unique_name("paused-group");
    let in_group = format!("group={group}");
    let sub = Subscription::new(unique_name("paused"), group.clone()).prefetch(PREFETCH);
    broker.provision(&sub).await.expect("provision");
    let batch = (0..MESSAGES).map(|i| Message::new(i.to_string())).collect();
    broker
        .publish_batch(sub.topic(), batch)
        .await
        .expect("publish");

    // Nothing taken: the buffer fills and, a few seconds later, fetching
    // is paused.
    let mut first = broker.subscribe(sub.clone()).await.expect("subscribe");
    lines
        .wait_for("kafka fetching paused", &in_group, 1, JOIN)
        .await;
    let mut seen = Vec::new();
    for _ in 0..TAKEN_FIRST {
        let delivery = next_within(&mut first, JOIN).await;
        seen.push(seq_of(delivery.message()));
        delivery.ack().await.expect("ack");
    }

    // A second member joins (the group gives the partition to one of the
    // two) and leaves: the first member has the partition again either way,
    // given back while its fetching was paused.
    let second = broker.subscribe(sub.clone()).await.expect("subscribe");
    lines
        .wait_for("kafka partition assigned", &in_group, 2, JOIN)
        .await;
    drop(second);

    while seen.len() < MESSAGES {
        let delivery = next_within(&mut first, JOIN).await;
        seen.push(seq_of(delivery.message()));
        delivery.ack().await.expect("ack");
    }
    let expected: Vec<usize> = (0..MESSAGES).collect();
    assert_eq!(seen, expected, "every record once, in order");
    eprintln!(
        "paused {} times, resumed {} times, assigned {} times",
        lines.count("kafka fetching paused", &in_group),
        lines.count("kafka fetching resumed", &in_group),
        lines.count("kafka partition assigned", &in_group),
    );
    drop(first);
    broker.close().await.expect("close");
}
