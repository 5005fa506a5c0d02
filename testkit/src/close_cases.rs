//! Closing cases: `close` waits for the connection's detached work and
//! reports, as [`Error::Timeout`] naming `close`, work it could not finish
//! within its documented bound; it never says `Ok` about an incomplete
//! close.

use std::time::{Duration, Instant};

use courier_core::{Broker, Error, Message, Nack, Result, Subscription};

use crate::fault_cases::provisioned_with_one;
use crate::harness::{Capability, Case, Ctx};

/// Longer than any adapter's documented close bound (RabbitMQ's is the
/// longest, about 21 s): a close still running then counts as hung.
const CLOSE_HANG_LIMIT: Duration = Duration::from_secs(60);

/// How long the delayed requeue of the first case waits.
const REQUEUE_DELAY: Duration = Duration::from_secs(2);

/// Every closing case.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "close_with_a_pending_delayed_requeue_loses_nothing",
            &[],
            |ctx| Box::pin(close_with_a_pending_delayed_requeue_loses_nothing(ctx)),
        ),
        Case::new(
            "close_through_a_black_hole_reports_the_unfinished_close",
            &[Capability::Proxy],
            |ctx| Box::pin(close_through_a_black_hole_reports_the_unfinished_close(ctx)),
        ),
        Case::new(
            "close_of_a_frozen_broker_reports_the_unfinished_close",
            &[Capability::Freeze],
            |ctx| Box::pin(close_of_a_frozen_broker_reports_the_unfinished_close(ctx)),
        ),
    ]
}

/// A message nacked with a delay just before `close`: `close` succeeds, and
/// the message comes back exactly once to the group afterwards.
async fn close_with_a_pending_delayed_requeue_loses_nothing(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = Subscription::new(ctx.name("t"), ctx.name("g"));
    broker.provision(&sub).await.expect("provision");
    let message = Message::new("again later");
    let id = message.id().clone();
    broker.publish(sub.topic(), message).await.expect("publish");
    let mut stream = broker.subscribe(sub.clone()).await.expect("subscribe");
    let delivery = ctx.next(&mut stream).await;
    assert_eq!(delivery.message().id(), &id);
    delivery
        .nack(Nack::RequeueAfter(REQUEUE_DELAY))
        .await
        .expect("nack with a delay");
    let outcome = closed_within_limit(&broker, "close with a pending delayed requeue").await;
    outcome.expect("close with a pending delayed requeue");
    drop(stream);

    let other = ctx.broker().await;
    let mut again = other.subscribe(sub.clone()).await.expect("subscribe again");
    let delivery = ctx.next(&mut again).await;
    assert_eq!(delivery.message().id(), &id, "the requeued message");
    delivery.ack().await.expect("ack");
    ctx.expect_nothing(&mut again).await;
    drop(again);
    other.close().await.expect("close the second connection");
}

/// A close whose connection stops answering (the proxy swallows every
/// byte) while a publish waits for its confirmation: the typed timeout.
async fn close_through_a_black_hole_reports_the_unfinished_close(ctx: Ctx) {
    let (broker, proxy) = ctx.proxied_broker().await;
    let sub = consumed_one(&ctx, &broker).await;
    proxy.black_hole();
    let publishing = publish_in_flight(&broker, &sub).await;
    let outcome = closed_within_limit(&broker, "close through a black hole").await;
    publishing.abort();
    proxy.heal();
    assert_close_timed_out(outcome);
}

/// The same against a frozen server (the case's connection goes to the
/// freezable server).
async fn close_of_a_frozen_broker_reports_the_unfinished_close(ctx: Ctx) {
    let broker = ctx.broker().await;
    let sub = consumed_one(&ctx, &broker).await;
    ctx.freeze_broker().await;
    let publishing = publish_in_flight(&broker, &sub).await;
    let outcome = closed_within_limit(&broker, "close of a frozen broker").await;
    publishing.abort();
    ctx.thaw_broker().await;
    assert_close_timed_out(outcome);
}

/// Provisions a group, receives and acks one message through it, and
/// drops the stream (whose channel or consumer closing is then detached
/// work of the connection).
async fn consumed_one(ctx: &Ctx, broker: &Broker) -> Subscription {
    let (sub, _) = provisioned_with_one(ctx, broker).await;
    let mut stream = broker.subscribe(sub.clone()).await.expect("subscribe");
    ctx.next(&mut stream).await.ack().await.expect("ack");
    drop(stream);
    sub
}

/// Starts a publish that the cut link cannot confirm.
async fn publish_in_flight(
    broker: &Broker,
    sub: &Subscription,
) -> tokio::task::JoinHandle<Result<()>> {
    let publisher = broker.clone();
    let topic = sub.topic().to_owned();
    let publishing =
        tokio::spawn(async move { publisher.publish(&topic, Message::new("during")).await });
    // Gives the publish a head start; not needed for the outcome (closing
    // a connection that cannot answer cannot finish either way), only so
    // that the close also has a pending confirmation to report.
    tokio::time::sleep(Duration::from_millis(200)).await;
    publishing
}

/// `broker.close()`, failing the case when it hangs; prints the time.
async fn closed_within_limit(broker: &Broker, what: &str) -> Result<()> {
    let started = Instant::now();
    let Ok(outcome) = tokio::time::timeout(CLOSE_HANG_LIMIT, broker.close()).await else {
        panic!("{what} hung: no answer within {CLOSE_HANG_LIMIT:?}");
    };
    let shown = match &outcome {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    eprintln!("close: {what}: {:.2?}: {shown}", started.elapsed());
    outcome
}

#[track_caller]
fn assert_close_timed_out(outcome: Result<()>) {
    match outcome {
        Err(Error::Timeout {
            operation: "close", ..
        }) => {}
        Err(other) => panic!("expected Error::Timeout naming close, got {other} ({other:?})"),
        Ok(()) => panic!("close said Ok although its work could not finish"),
    }
}
