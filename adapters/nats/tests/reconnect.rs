//! 100 concurrent publishers while the server is restarted twice, with
//! publishes confirmed before and after each restart: every message whose
//! publish returned `Ok` is received
//! (`courier_testkit::fixtures::restarts_under_load`). And an ack or a
//! publish awaiting its confirmation when the connection is lost fails at
//! once, as `Unavailable`, instead of waiting out the request timeout.

use std::time::Duration;

use courier_nats::NatsBroker;

/// How long the connection-loss test waits for anything: far below its
/// request timeout, so that a timeout cannot pass for a lost connection.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_under_load_lose_no_confirmed_message() {
    let server = courier_testkit::fixtures::fresh_nats()
        .await
        .expect("own nats container");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    courier_testkit::fixtures::restarts_under_load("nats", broker.into_broker(), &server).await;
}

/// An ack, then a publish, awaiting the server's answer when the
/// connection is lost fail at once with `Unavailable` instead of waiting
/// out the request timeout (the answer cannot come over the new
/// connection). The message whose ack is unknown comes back on the same
/// subscription once the link heals and is then acked, or nothing is
/// pending any more (the ack went out on the new connection); the message
/// whose publish failed is published again and received once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmations_in_flight_when_the_connection_is_lost_fail_at_once() {
    use courier_core::{Message, Publisher, Subscriber, Subscription};
    use courier_nats::NatsConfig;
    use courier_testkit::deliveries::next_within;
    use courier_testkit::proxy::FaultProxy;

    // Far beyond `PATIENCE`: a timeout cannot pass within it.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let proxy = FaultProxy::start(server.address()).await.expect("proxy");
    let config = NatsConfig::default()
        .request_timeout(REQUEST_TIMEOUT)
        .ack_wait(Duration::from_secs(2));
    let broker = NatsBroker::connect_with(&proxy.proxied_url(server.url()), config)
        .await
        .expect("connect through the proxy");
    let topic = courier_testkit::fixtures::unique_name("ack-lost");
    let subscription = Subscription::new(&topic, "g");
    Subscriber::provision(&broker, &subscription)
        .await
        .expect("provision");
    let sent = Message::new("first");
    Publisher::publish(&broker, &topic, sent.clone())
        .await
        .expect("publish");
    let mut stream = Subscriber::subscribe(&broker, subscription)
        .await
        .expect("subscribe");
    let delivery = next_within(&mut stream, PATIENCE).await;
    assert_eq!(delivery.message().id(), sent.id());

    cut_while_waiting(&proxy, "ack", delivery.ack()).await;

    // The same handle works again once the link heals. The ack's outcome
    // is unknown: when the client had not written it before the loss, it
    // goes out on the new connection and is recorded, and the message does
    // not come back. Otherwise the message comes back after `ack_wait`, and
    // its ack is confirmed.
    proxy.heal();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        tokio::select! {
            again = next_within(&mut stream, PATIENCE) => {
                assert_eq!(again.message().id(), sent.id(), "the unacked message again");
                again.ack().await.expect("ack after the link healed");
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                let lag = Subscriber::lag(&broker, &topic, "g").await;
                if lag.as_ref().is_ok_and(|lag| lag.total == 0) {
                    eprintln!("the ack went out after the reconnect: nothing is pending");
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the unacked message neither came back nor was acked: {lag:?}"
                );
            }
        }
    }

    // The same for a publish, its ack awaited.
    let second = Message::new("second");
    cut_while_waiting(
        &proxy,
        "publish",
        Publisher::publish(&broker, &topic, second.clone()),
    )
    .await;
    proxy.heal();
    Publisher::publish(&broker, &topic, second.clone())
        .await
        .expect("publish again after the link healed");
    let received = next_within(&mut stream, PATIENCE).await;
    assert_eq!(received.message().id(), second.id(), "stored once");
    received.ack().await.expect("ack");
    drop(stream);
    courier_core::Close::close(&broker).await.expect("close");
}

/// Sends `operation` into a link that forwards nothing (polling it once
/// sends it and starts its wait for the server's answer), resets the link,
/// and checks that it then fails at once as `Unavailable`, well before the
/// request timeout. The link stays black-holed: the caller heals it.
async fn cut_while_waiting(
    proxy: &courier_testkit::proxy::FaultProxy,
    what: &str,
    operation: impl std::future::Future<Output = courier_core::Result<()>>,
) {
    proxy.black_hole();
    let mut operation = std::pin::pin!(operation);
    assert!(
        futures::poll!(operation.as_mut()).is_pending(),
        "the {what} cannot be answered through a black hole"
    );
    assert_eq!(proxy.reset_all(), 1, "one connection to reset");
    let outcome = tokio::time::timeout(PATIENCE, operation)
        .await
        .unwrap_or_else(|_| {
            panic!("the {what} ends when the connection is lost, not after the request timeout")
        });
    let err = outcome.expect_err("no answer can have come");
    assert_eq!(
        err.broker_kind(),
        Some(courier_core::BrokerErrorKind::Unavailable),
        "the {what}: a lost connection, not a timeout: {err}"
    );
}
