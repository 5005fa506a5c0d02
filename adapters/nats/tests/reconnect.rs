//! 100 concurrent publishers while the server is restarted twice, with
//! publishes confirmed before and after each restart: every message whose
//! publish returned `Ok` is received
//! (`courier_testkit::fixtures::restarts_under_load`). And an ack or a
//! publish awaiting its confirmation when the connection is lost fails at
//! once, as `Unavailable`, instead of waiting out the request timeout.
//! A publish through a connection that takes nothing more ends in a
//! timeout within the request timeout, and the handle works once it heals.

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

/// How many messages the backlog tests publish before the loss, and the
/// prefetch that pulls them all.
const BACKLOG: usize = 32;

/// A backlog the delivery stream holds when the client reconnects to the
/// same server (a network blip) is handed out as it is: that server still
/// tracks its deliveries, and their acks are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_held_across_a_blip_to_the_same_server_is_handed_out_as_it_is() {
    let (_server, proxy, broker) =
        proxied(courier_nats::NatsConfig::default().request_timeout(Duration::from_secs(3))).await;
    let (topic, mut stream) = hold_backlog(&broker, "blip").await;
    assert_eq!(proxy.reset_all(), 1, "one connection to reset");
    publish_after(&broker, &topic).await;
    read_backlog(&mut stream, |_| 1, First::Not).await;
    drop(stream);
    courier_core::Close::close(&broker).await.expect("close");
}

/// A backlog the delivery stream holds when the server restarts is pulled
/// again from the restarted server, not handed out: a restarted server may
/// have lost its consumer's record of what it delivered before
/// (nats-server writes that record behind its deliveries), and then it
/// answers no ack of those deliveries: a reader that acks each message
/// before taking the next waited out the request timeout once per held
/// message (the restart test once stalled for 35 min). Whatever part of
/// its record the restart kept, every message of the backlog comes again,
/// in order, and every ack is confirmed: a message the restarted server
/// knew as delivered comes as a redelivery (delivery count 2), one it
/// forgot as its first delivery (count 1); the first message comes again
/// when the server forgot it entirely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_pulled_from_a_server_that_restarted_is_pulled_again() {
    let server = courier_testkit::fixtures::fresh_nats()
        .await
        .expect("own nats container");
    let config = courier_nats::NatsConfig::default().request_timeout(Duration::from_secs(3));
    let broker = NatsBroker::connect_with(server.url(), config)
        .await
        .expect("connect");
    let (topic, mut stream) = hold_backlog(&broker, "restarted").await;
    server.restart().await.expect("restart");
    publish_after(&broker, &topic).await;
    // Nothing was pulled since the restart (the prefetch is full): this is
    // the record the restarted server recovered.
    let recovered = consumer_state(&broker, &topic).await;
    eprintln!("the restarted server recovered {recovered:?}");
    // Message `i` is the stream's message `i + 1`.
    let known = |i: usize| (i as u64) < recovered.delivered;
    let first = if recovered.delivered == 0 {
        First::Again
    } else if recovered.acked == 0 {
        // Pending, not held: it comes back only after `ack_wait`.
        First::Maybe
    } else {
        First::Not
    };
    read_backlog(&mut stream, |i| if known(i) { 2 } else { 1 }, first).await;
    drop(stream);
    courier_core::Close::close(&broker).await.expect("close");
}

/// Publishes `BACKLOG` messages (`0`, `1`, ...) to a new topic, subscribes
/// with a prefetch of as many, takes and acks the first, and returns once
/// the server delivered the whole backlog: all but the first are then held
/// in the stream.
async fn hold_backlog(broker: &NatsBroker, name: &str) -> (String, courier_core::DeliveryStream) {
    use courier_core::{Message, Publisher, Subscriber, Subscription};
    use courier_testkit::deliveries::next_within;

    let topic = courier_testkit::fixtures::unique_name(name);
    let subscription = Subscription::new(&topic, "g").prefetch(BACKLOG as u16);
    Subscriber::provision(broker, &subscription)
        .await
        .expect("provision");
    for i in 0..BACKLOG {
        Publisher::publish(broker, &topic, Message::new(i.to_string()))
            .await
            .expect("publish");
    }
    let mut stream = Subscriber::subscribe(broker, subscription)
        .await
        .expect("subscribe");
    let first = next_within(&mut stream, PATIENCE).await;
    assert_eq!(first.message().payload().as_ref(), b"0");
    first.ack().await.expect("ack before the loss");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while consumer_state(broker, &topic).await.delivered < BACKLOG as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog was not pulled within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A round trip after the server reported the deliveries: they were
    // sent to this connection before its answer to the round trip.
    broker.client().flush().await.expect("flush");
    (topic, stream)
}

/// Where group `g` of a topic stands on the server, in stream sequences.
#[derive(Debug, Clone, Copy)]
struct ConsumerState {
    /// The last message delivered.
    delivered: u64,
    /// Every message up to this one is acked.
    acked: u64,
}

async fn consumer_state(broker: &NatsBroker, topic: &str) -> ConsumerState {
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        async_nats::jetstream::new(broker.client().clone())
            .get_stream(courier_nats::stream_name(topic))
            .await
            .expect("stream")
            .get_consumer(&courier_nats::consumer_name("g"))
            .await
            .expect("consumer");
    let info = consumer.cached_info();
    ConsumerState {
        delivered: info.delivered.stream_sequence,
        acked: info.ack_floor.stream_sequence,
    }
}

/// Publishes message `BACKLOG` until the server confirms it: the client
/// has reconnected. The same message each try: one that failed after the
/// server stored it is not stored twice (its id is the `Nats-Msg-Id`).
async fn publish_after(broker: &NatsBroker, topic: &str) {
    use courier_core::{Message, Publisher};

    let after = Message::new(BACKLOG.to_string());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while Publisher::publish(broker, topic, after.clone())
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publish confirmed within {PATIENCE:?} of the loss"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the first message of the backlog (acked before the loss)
/// comes again.
#[derive(Debug, Clone, Copy, PartialEq)]
enum First {
    Again,
    Maybe,
    Not,
}

/// Reads as a sequential reader does, each message acked before the next
/// is taken, until the backlog (`1` to `BACKLOG - 1`) and the message
/// published after the loss have come: the backlog in order, message `i`
/// with `count_of(i)` as its delivery count, the later message once and
/// first delivered, every ack confirmed, and the first message as `first`
/// says. The later message may come before the backlog.
async fn read_backlog(
    stream: &mut courier_core::DeliveryStream,
    count_of: impl Fn(usize) -> u32,
    first: First,
) {
    use courier_testkit::deliveries::next_within;

    let started = tokio::time::Instant::now();
    let (mut backlog, mut afters, mut firsts) = (Vec::new(), 0, 0);
    while backlog.len() < BACKLOG - 1 || afters == 0 || (first == First::Again && firsts == 0) {
        let delivery = next_within(stream, PATIENCE).await;
        let payload: usize = std::str::from_utf8(delivery.message().payload())
            .expect("utf8")
            .parse()
            .expect("a number");
        let count = delivery.delivery_count();
        match payload {
            0 => firsts += 1,
            BACKLOG => {
                afters += 1;
                assert_eq!(count, Some(1), "the message published after the loss");
            }
            _ => {
                assert_eq!(
                    count,
                    Some(count_of(payload)),
                    "message {payload} of the backlog"
                );
                backlog.push(payload);
            }
        }
        delivery.ack().await.unwrap_or_else(|e| {
            panic!("the ack of message {payload} (delivery count {count:?}): {e}")
        });
        assert!(
            started.elapsed() < PATIENCE,
            "the backlog was not read within {PATIENCE:?}: {} of {} messages",
            backlog.len(),
            BACKLOG - 1
        );
    }
    assert_eq!(
        backlog,
        (1..BACKLOG).collect::<Vec<_>>(),
        "the backlog, in order"
    );
    assert_eq!(afters, 1, "the message published after the loss, once");
    match first {
        First::Again => assert_eq!(firsts, 1, "the first message again, once"),
        First::Maybe => assert!(firsts <= 1, "the first message again at most once"),
        First::Not => assert_eq!(firsts, 0, "the first message not again"),
    }
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
    use courier_core::{Message, Publisher, Subscriber};
    use courier_testkit::deliveries::next_within;

    // Far beyond `PATIENCE`: a timeout cannot pass within it.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

    let Held {
        _server,
        proxy,
        broker,
        topic,
        sent,
        mut stream,
        delivery,
    } = Held::new(REQUEST_TIMEOUT, "ack-lost").await;

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

/// A broker with `config` connected to the shared server through a fault
/// proxy of its own.
async fn proxied(
    config: courier_nats::NatsConfig,
) -> (
    std::sync::Arc<courier_testkit::fixtures::BrokerFixture>,
    courier_testkit::proxy::FaultProxy,
    NatsBroker,
) {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let proxy = courier_testkit::proxy::FaultProxy::start(server.address())
        .await
        .expect("proxy");
    let broker = NatsBroker::connect_with(&proxy.proxied_url(server.url()), config)
        .await
        .expect("connect through the proxy");
    (server, proxy, broker)
}

/// A broker connected through a fault proxy (`ack_wait` 2 s) and
/// subscribed to a new topic, with the delivery of the one message
/// published there in hand, not settled.
struct Held {
    _server: std::sync::Arc<courier_testkit::fixtures::BrokerFixture>,
    proxy: courier_testkit::proxy::FaultProxy,
    broker: NatsBroker,
    topic: String,
    sent: courier_core::Message,
    stream: courier_core::DeliveryStream,
    delivery: courier_core::Delivery,
}

impl Held {
    async fn new(request_timeout: Duration, name: &str) -> Self {
        use courier_core::{Message, Publisher, Subscriber, Subscription};

        let config = courier_nats::NatsConfig::default()
            .request_timeout(request_timeout)
            .ack_wait(Duration::from_secs(2));
        let (server, proxy, broker) = proxied(config).await;
        let topic = courier_testkit::fixtures::unique_name(name);
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
        let delivery = courier_testkit::deliveries::next_within(&mut stream, PATIENCE).await;
        assert_eq!(delivery.message().id(), sent.id());
        Held {
            _server: server,
            proxy,
            broker,
            topic,
            sent,
            stream,
            delivery,
        }
    }
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

/// A publish and an ack on a connection that takes no more (the server
/// stopped reading, so the client's socket and its command channel are
/// full) return [`Error::Timeout`](courier_core::Error::Timeout) within
/// the request timeout: the publish even when it must first declare the
/// topic's stream. Handing a request to the client waits for room in its
/// command channel with no bound of its own. Once the link heals, the same
/// handle publishes again, and the unacked message comes back and is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_and_an_ack_through_a_stalled_connection_time_out_within_the_request_timeout() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use courier_core::{Message, Publisher};
    use courier_testkit::deliveries::next_within;

    const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
    /// Beyond the bound: time for the timeout's own wake-up on a busy machine.
    const MARGIN: Duration = Duration::from_secs(2);
    /// No publish of the flood returned for this long: the client may take
    /// no more, which a probe publish that waits [`PROBE`] confirms.
    const STALLED: Duration = Duration::from_secs(1);
    const PROBE: Duration = Duration::from_millis(500);

    // A delivery to ack once the connection takes nothing more.
    let Held {
        _server,
        proxy,
        broker,
        sent: held,
        mut stream,
        delivery,
        ..
    } = Held::new(REQUEST_TIMEOUT, "stalled-ack").await;

    // The link forwards nothing and reads nothing: core publishes (to a
    // subject nobody hears) fill the socket, then the client's command
    // channel, until a publish waits for room.
    proxy.black_hole();
    let returned = Arc::new(AtomicU64::new(0));
    let flood = tokio::spawn({
        let client = broker.client().clone();
        let returned = returned.clone();
        let subject = courier_testkit::fixtures::unique_name("flood");
        async move {
            let payload = bytes::Bytes::from(vec![0_u8; 1024]);
            loop {
                if client
                    .publish(subject.clone(), payload.clone())
                    .await
                    .is_err()
                {
                    return;
                }
                returned.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (mut last, mut since) = (0, tokio::time::Instant::now());
    let client = broker.client().clone();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = returned.load(Ordering::Relaxed);
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= STALLED {
            // The flood may only have been starved of CPU: full is when
            // another publish cannot be handed over either.
            let probe = client.publish("stall-probe", bytes::Bytes::new());
            if tokio::time::timeout(PROBE, probe).await.is_err() {
                break;
            }
            since = tokio::time::Instant::now();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood did not fill the stalled connection within {PATIENCE:?} ({now} publishes)"
        );
    }
    eprintln!("the client took {last} publishes of 1 KiB, then no more");

    // A topic never published to: its stream is declared first.
    let topic = courier_testkit::fixtures::unique_name("stalled");
    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(
        REQUEST_TIMEOUT + MARGIN,
        Publisher::publish(&broker, &topic, Message::new("stalled")),
    )
    .await
    .unwrap_or_else(|_| {
        panic!("a publish through a stalled connection returns within the request timeout")
    });
    assert_timeout("publish", outcome, started.elapsed(), REQUEST_TIMEOUT);

    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(REQUEST_TIMEOUT + MARGIN, delivery.ack())
        .await
        .unwrap_or_else(|_| {
            panic!("an ack through a stalled connection returns within the request timeout")
        });
    assert_timeout("ack", outcome, started.elapsed(), REQUEST_TIMEOUT);

    proxy.heal();
    flood.abort();
    tokio::time::timeout(
        PATIENCE,
        Publisher::publish(&broker, &topic, Message::new("healed")),
    )
    .await
    .expect("a publish after the link healed returns")
    .expect("the same handle publishes once the link heals");
    // The ack never left the client: the message comes back.
    let again = next_within(&mut stream, PATIENCE).await;
    assert_eq!(again.message().id(), held.id(), "the unacked message again");
    again.ack().await.expect("ack after the link healed");
    drop(stream);
    courier_core::Close::close(&broker).await.expect("close");
}

/// `outcome` is the request timeout's [`Error::Timeout`] for `operation`,
/// and came no earlier than that timeout.
fn assert_timeout(
    operation: &str,
    outcome: courier_core::Result<()>,
    took: Duration,
    request_timeout: Duration,
) {
    match outcome {
        Err(courier_core::Error::Timeout {
            operation: named,
            after,
        }) => {
            assert_eq!(named, operation);
            assert_eq!(after, request_timeout);
        }
        other => panic!("a stalled {operation} is a timeout, got {other:?}"),
    }
    assert!(
        took >= request_timeout,
        "the {operation}'s timeout comes at the request timeout, not before: {took:?}"
    );
}
