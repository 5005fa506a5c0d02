//! A quorum queue left without a leader (RabbitMQ keeps it so after a hard
//! kill within about a second of its declaration, see the crate docs) is a
//! typed, bounded error naming the queue for `provision`, `subscribe` and
//! `publish`, never a hang.
//!
//! The leaderless state is not guaranteed to come back after each kill:
//! every round says whether it was reached, and the assertions on the
//! error hold whenever it was. A round where the queue kept its leader
//! checks that the queue works.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_amqp::{AmqpBroker, AmqpConfig, Reconnect};
use courier_core::prelude::*;
use courier_core::{BrokerErrorKind, Error, Message, Subscription};
use courier_testkit::fixtures::{fresh_rabbitmq, unique_name};

/// The publish/confirm bound of the connection under test.
const CONFIRM: Duration = Duration::from_secs(6);
/// Kill-and-restart rounds.
const ROUNDS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_without_a_leader_is_a_typed_bounded_error() {
    let fixture = Arc::new(fresh_rabbitmq().await.expect("RabbitMQ fixture"));
    let config = AmqpConfig::default()
        .confirm_timeout(CONFIRM)
        .reconnect(Reconnect::default().give_up_after(Duration::from_secs(180)));
    let mut reached = 0;
    for round in 1..=ROUNDS {
        let broker = AmqpBroker::connect_with(fixture.url(), config.clone())
            .await
            .expect("connect");
        let topic = unique_name("leaderless");
        let sub = Subscription::new(&topic, "g");
        broker
            .provision(&sub)
            .await
            .expect("provision before the kill");
        // At once: the queue is younger than RabbitMQ's registry interval.
        fixture.kill_and_start().await.expect("kill and start");

        // The same handle reconnects; a queue declared now is healthy.
        let control = Subscription::new(unique_name("control"), "g");
        let deadline = Instant::now() + Duration::from_secs(180);
        while let Err(e) = broker.provision(&control).await {
            assert!(Instant::now() < deadline, "never reconnected: {e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        let (provisioned, took) = timed(broker.provision(&sub)).await;
        eprintln!("round {round}: provision after {took:.2?}: {provisioned:?}");
        let Err(error) = provisioned else {
            eprintln!("round {round}: the queue kept its leader (leaderless state not reached)");
            let message = Message::new("after");
            broker
                .publish(&topic, message)
                .await
                .expect("publish to a healthy queue");
            broker.close().await.expect("close");
            continue;
        };
        reached += 1;
        assert_no_leader("provision", &error, &topic);

        let (subscribed, took) = timed(broker.subscribe(sub.clone())).await;
        eprintln!(
            "round {round}: subscribe after {took:.2?}: {:?}",
            subscribed.as_ref().err()
        );
        match subscribed {
            Ok(_) => panic!("subscribe to a queue without a leader succeeded"),
            Err(error) => assert_no_leader("subscribe", &error, &topic),
        }

        let (published, took) = timed(broker.publish(&topic, Message::new("lost?"))).await;
        eprintln!("round {round}: publish after {took:.2?}: {published:?}");
        match published {
            Ok(()) => panic!("a publish to a queue without a leader was confirmed"),
            Err(error) => assert_no_leader("publish", &error, &topic),
        }
        // The connection stays usable for the healthy queues.
        broker
            .publish(control.topic(), Message::new("healthy"))
            .await
            .expect("publish to the healthy queue");
        let _ = broker.close().await;
    }
    eprintln!("leaderless state reached in {reached} of {ROUNDS} rounds");
}

/// Runs `operation`, failing the test when it outlives twice the bound
/// plus a margin (a hang, not a slow answer); returns how long it took.
async fn timed<T>(operation: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let limit = CONFIRM * 2 + Duration::from_secs(5);
    let outcome = tokio::time::timeout(limit, operation)
        .await
        .unwrap_or_else(|_| panic!("no answer within {limit:?}: hung"));
    (outcome, started.elapsed())
}

#[track_caller]
fn assert_no_leader(what: &str, error: &Error, topic: &str) {
    match error {
        Error::Broker {
            kind: BrokerErrorKind::Unavailable,
            ..
        } => {}
        other => panic!("{what}: expected an unavailable broker error, got {other} ({other:?})"),
    }
    assert!(error.is_retryable(), "{what}: {error} is not retryable");
    let shown = error.to_string();
    assert!(
        shown.contains(topic) && shown.contains("has no leader"),
        "{what}: the error does not name the queue and its missing leader: {shown}"
    );
}
