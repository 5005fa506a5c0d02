//! The consumer runtime keeps consuming across a three-minute broker
//! outage, on RabbitMQ and NATS at once.
//!
//! Each broker runs in a container of its own and is reached through a
//! [`FaultProxy`] of its own. A consumer (the runtime, resubscribing) and a
//! publisher run through the proxy; then the proxy resets every connection
//! and turns into a black hole for [`OUTAGE`], longer than RabbitMQ's
//! default reconnect budget (two minutes), so the AMQP adapter gives up and
//! only the runtime's resubscribing brings the consumer back. The
//! publisher keeps trying all along: its failures must be typed and
//! retryable, and every publish must end within `publish_timeout` (plus
//! [`SLACK`] for a busy machine), whatever the connection is doing: a
//! RabbitMQ publish that finds its connection lost does not wait out the
//! reconnect budget. After the heal every confirmed message must be
//! handled, and the duplicates are counted exactly.
//!
//! The two outages run side by side (the whole test takes about four
//! minutes), so the test is a binary of its own rather than a case of the
//! conformance suite, whose cases run one at a time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier::runtime::{self, Consumer};
use courier::{Broker, Error, Message, MessageId, Subscription};
use courier_testkit::fixtures::{self, BrokerFixture, unique_name};
use courier_testkit::proxy::FaultProxy;

/// The `publish_timeout` both brokers are connected with (the URL options
/// below say `3s`).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);
/// What a publish may take past `publish_timeout` on a busy machine.
const SLACK: Duration = Duration::from_secs(5);

/// How long the link stays a black hole.
const OUTAGE: Duration = Duration::from_secs(180);
/// Messages handled before the outage, and confirmed after the heal,
/// before the case goes on.
const PROGRESS: usize = 20;
/// How long the case waits for progress (a connection, a resubscribe
/// after the heal, the rest of the messages) before it fails.
const PATIENCE: Duration = Duration::from_secs(120);
/// Pause between two publishes, and after a failed one.
const PUBLISH_PACE: Duration = Duration::from_millis(50);
/// How long the case watches for late duplicates once every confirmed
/// message was handled.
const QUIET: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_keeps_consuming_across_a_three_minute_outage() {
    let (amqp, nats) = tokio::join!(
        async {
            let server = fixtures::fresh_rabbitmq().await.expect("RabbitMQ server");
            // The default reconnect budget (two minutes) is shorter than
            // the outage.
            outage("amqp", &server, "publish_timeout=3s&connect_timeout=2s").await
        },
        async {
            let server = fixtures::fresh_nats().await.expect("NATS server");
            outage("nats", &server, "publish_timeout=3s").await
        },
    );
    for report in [&amqp, &nats] {
        report.print();
    }
    for report in [&amqp, &nats] {
        report.check();
    }
    // RabbitMQ gives up reconnecting within the outage: the consumer's
    // stream ends and only subscribing again brings it back. (The NATS
    // adapter reconnects by itself, without a limit.)
    assert!(
        amqp.resubscribes >= 1,
        "amqp: the consumer never subscribed again after its adapter gave up"
    );
}

/// What one outage showed.
#[derive(Debug)]
struct Report {
    adapter: &'static str,
    outage: Duration,
    reset: u64,
    ended_during_outage: bool,
    /// Publishes that returned `Ok`, in order.
    confirmed: Vec<MessageId>,
    /// Every message published, confirmed or not.
    attempted: HashSet<MessageId>,
    /// How often each message was handled.
    handled: HashMap<MessageId, usize>,
    failed_publishes: usize,
    timed_out_publishes: usize,
    /// Failed publishes whose error is not retryable.
    fatal_publish_errors: Vec<String>,
    /// The longest a publish took, confirmed or failed.
    longest_publish: Duration,
    resubscribes: u64,
    first_after_heal: Duration,
}

impl Report {
    fn lost(&self) -> usize {
        self.confirmed
            .iter()
            .filter(|id| !self.handled.contains_key(id))
            .count()
    }

    fn duplicates(&self) -> usize {
        self.handled.values().map(|n| n - 1).sum()
    }

    fn print(&self) {
        let unconfirmed_handled = self.handled.len()
            - self
                .confirmed
                .iter()
                .filter(|id| self.handled.contains_key(id))
                .count();
        eprintln!(
            "{}: outage {:.1?} ({} connections reset): {} confirmed, {} handled \
             ({unconfirmed_handled} of them published without Ok), {} lost, {} duplicates; \
             {} publishes failed ({} timed out), the longest publish took {:.1?}; {} resubscribes; \
             first message {:.2?} after the heal",
            self.adapter,
            self.outage,
            self.reset,
            self.confirmed.len(),
            self.handled.len(),
            self.lost(),
            self.duplicates(),
            self.failed_publishes,
            self.timed_out_publishes,
            self.longest_publish,
            self.resubscribes,
            self.first_after_heal,
        );
    }

    fn check(&self) {
        let adapter = self.adapter;
        assert!(
            self.reset > 0,
            "{adapter}: no connection went through the proxy"
        );
        assert!(
            !self.ended_during_outage,
            "{adapter}: the consumer ended during the outage"
        );
        assert_eq!(
            self.lost(),
            0,
            "{adapter}: confirmed messages never handled"
        );
        let unknown = self
            .handled
            .keys()
            .filter(|id| !self.attempted.contains(id))
            .count();
        assert_eq!(unknown, 0, "{adapter}: handled messages nobody published");
        assert!(
            self.failed_publishes > 0,
            "{adapter}: no publish failed: the publisher did not try during the outage"
        );
        assert!(
            self.longest_publish <= PUBLISH_TIMEOUT + SLACK,
            "{adapter}: a publish took {:?}, past publish_timeout ({PUBLISH_TIMEOUT:?})",
            self.longest_publish
        );
        assert!(
            self.fatal_publish_errors.is_empty(),
            "{adapter}: publishes failed with errors that are not retryable: {:?}",
            self.fatal_publish_errors
        );
    }
}

/// What the handler saw: how often each message was handled, when the
/// last one was, and how long after the heal the first one was.
#[derive(Debug, Default)]
struct Handled {
    counts: HashMap<MessageId, usize>,
    last: Option<Instant>,
    healed: Option<Instant>,
    first_after_heal: Option<Duration>,
}

/// What the publisher saw.
#[derive(Debug, Default)]
struct Published {
    confirmed: Vec<MessageId>,
    attempted: HashSet<MessageId>,
    failed: usize,
    timed_out: usize,
    fatal: Vec<String>,
    longest: Duration,
}

async fn outage(adapter: &'static str, server: &BrokerFixture, options: &str) -> Report {
    let proxy = FaultProxy::start(server.address())
        .await
        .expect("fault proxy");
    let url = format!("{}?{options}", proxy.proxied_url(server.url()));
    let connect = || async {
        courier::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{adapter}: connect through the proxy: {e} ({e:?})"))
    };
    let consuming = connect().await;
    let publishing = connect().await;
    let sub = Subscription::new(unique_name("outage"), "long-outage");
    consuming.provision(&sub).await.expect("provision");

    let handled: Arc<Mutex<Handled>> = Arc::default();
    let handler = {
        let handled = handled.clone();
        runtime::raw(move |message: Message| {
            let mut handled = handled.lock().expect("handled");
            *handled.counts.entry(message.id().clone()).or_default() += 1;
            let now = Instant::now();
            handled.last = Some(now);
            if let (Some(healed), None) = (handled.healed, handled.first_after_heal) {
                handled.first_after_heal = Some(now.duration_since(healed));
            }
            async { Ok(()) }
        })
    };
    let running = Consumer::builder(&consuming, sub.clone(), handler)
        .build()
        .start()
        .await
        .expect("start the consumer");

    let published: Arc<Mutex<Published>> = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let publisher = tokio::spawn(publish_until_stopped(
        publishing.clone(),
        sub.topic().to_owned(),
        published.clone(),
        stopped,
    ));
    wait_until(adapter, "handled before the outage", || {
        handled.lock().expect("handled").counts.len() >= PROGRESS
    })
    .await;

    // Every connection goes, and every new one hangs.
    proxy.black_hole();
    let reset = proxy.reset_all();
    let black_holed = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    let ended_during_outage = running.is_finished();
    let confirmed_at_heal = published.lock().expect("published").confirmed.len();
    proxy.heal();
    let healed = Instant::now();
    handled.lock().expect("handled").healed = Some(healed);

    wait_until(adapter, "publishes confirmed after the heal", || {
        published.lock().expect("published").confirmed.len() >= confirmed_at_heal + PROGRESS
    })
    .await;
    stop.send(true).expect("the publisher listens");
    publisher.await.expect("publisher task");
    let published = std::mem::take(&mut *published.lock().expect("published"));
    wait_until(adapter, "every confirmed message handled", || {
        let handled = handled.lock().expect("handled");
        published
            .confirmed
            .iter()
            .all(|id| handled.counts.contains_key(id))
    })
    .await;
    // Late duplicates still on their way are counted too.
    wait_until(adapter, "quiet after the last message", || {
        let last = handled.lock().expect("handled").last;
        last.is_some_and(|last| last.elapsed() >= QUIET)
    })
    .await;

    let resubscribes = running.resubscribes();
    running.shutdown().await.expect("a clean shutdown");
    consuming
        .close()
        .await
        .expect("close the consumer's broker");
    publishing
        .close()
        .await
        .expect("close the publisher's broker");
    let handled = std::mem::take(&mut *handled.lock().expect("handled"));
    Report {
        adapter,
        outage: healed.duration_since(black_holed),
        reset,
        ended_during_outage,
        confirmed: published.confirmed,
        attempted: published.attempted,
        handled: handled.counts,
        failed_publishes: published.failed,
        timed_out_publishes: published.timed_out,
        fatal_publish_errors: published.fatal,
        longest_publish: published.longest,
        resubscribes,
        first_after_heal: handled
            .first_after_heal
            .expect("every confirmed message was handled, some after the heal"),
    }
}

/// Publishes one message after another until told to stop, noting every
/// attempt, every confirmation and every failure.
async fn publish_until_stopped(
    broker: Broker,
    topic: String,
    published: Arc<Mutex<Published>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    for n in 0_u64.. {
        if *stop.borrow_and_update() {
            return;
        }
        let message = Message::new(n.to_string());
        let id = message.id().clone();
        published
            .lock()
            .expect("published")
            .attempted
            .insert(id.clone());
        let started = Instant::now();
        let outcome = broker.publish(&topic, message).await;
        {
            let mut published = published.lock().expect("published");
            published.longest = published.longest.max(started.elapsed());
            match outcome {
                Ok(()) => published.confirmed.push(id),
                Err(e) => {
                    published.failed += 1;
                    if matches!(e, Error::Timeout { .. }) {
                        published.timed_out += 1;
                    }
                    if !e.is_retryable() {
                        published.fatal.push(e.to_string());
                    }
                }
            }
        }
        tokio::time::sleep(PUBLISH_PACE).await;
    }
}

/// Waits until `done`, checking every 50 ms; fails the test when
/// [`PATIENCE`] passes first.
async fn wait_until(adapter: &str, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{adapter}: {what}: no progress within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
