//! Request/reply round trips: courier (`Broker::request` answered by a
//! `runtime::responder` consumer) against async-nats's own idiom
//! (`Client::request` answered by a core subscriber), on the same server,
//! in one run.
//!
//! Both go over core NATS both ways (at most once): courier's request to
//! the topic's request subject, where the responder listens as a queue
//! group, its reply to the requester's inbox. The responder side differs
//! in what it is: a consumer runtime at concurrency 64 (middleware, JSON
//! envelopes, request headers) against a bare receive loop.
//!
//! Two more comparisons split courier's cost between its sides: courier's
//! requester against a bare responder (a queue subscriber on courier's
//! request subject that echoes the request's headers back), and the raw
//! requester against courier's responder (rows marked `requester only` and
//! `responder only`); each is compared with the raw pair in the same
//! interleaved way.
//!
//! A courier request and its reply each carry one NATS header (courier's
//! fields: ids, timestamp, deadline), which the raw idiom does not. The
//! rows marked `raw with one header` compare the full courier round trip
//! with a raw pair whose request carries one header of the same size and
//! whose responder echoes it: what carrying the message's metadata costs
//! the client on its own.
//!
//! `cargo bench -p courier-nats --bench request_reply` (starts its own
//! NATS container; `COURIER_TEST_NATS_URL` uses a running server instead).
//! `-- requester` (or `responder`, `header`, `full`) runs only the
//! comparisons whose label holds the word (`full`: the plain one).
//! `-- ROUNDS` (or `COURIER_BENCH_ROUNDS`) sets the rounds per concurrency (default 5); the sides
//! alternate who goes first, and the medians of the rounds are compared
//! (`request c=N p50`/`p99` in microseconds, `request c=N` in requests per
//! second, `request c=N cpu/req` in CPU microseconds of the whole process,
//! requester and responder, per round trip: what holds on a busy machine).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_core::runtime::{self, Consumer, Envelope};
use courier_core::{Broker, Message, Subscription};
use courier_nats::NatsBroker;
use courier_testkit::bench::{Report, Rounds, Row, Side, Unit, interleaved};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// Requests per requester task per round.
const PER_TASK: [(usize, usize); 2] = [(1, 1_000), (64, 60)];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ping {
    seq: u64,
    pad: String,
}

fn ping(seq: u64) -> Ping {
    Ping {
        seq,
        pad: "x".repeat(40),
    }
}

/// One round's figures.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// Microseconds.
    p50: f64,
    /// Microseconds.
    p99: f64,
    per_second: f64,
    /// CPU microseconds of this whole process (requester and responder)
    /// per round trip.
    cpu: f64,
    /// Times the process's threads were scheduled onto a CPU, per round
    /// trip (wake-ups: each hand-off between threads costs one).
    switches: f64,
}

fn main() {
    let rounds = courier_testkit::bench::rounds(5);
    let runtime = courier_testkit::bench::runtime();
    runtime.block_on(async move {
        let server = courier_testkit::fixtures::nats().await.expect("nats fixture");
        let url = server.url().to_owned();
        let raw = RawSide::start(&url, None).await;
        let raw_with_header = RawSide::start(&url, Some(FIELDS_LIKE_COURIERS)).await;
        let courier = CourierSide::start(&url).await;
        let requester_only = courier.against_a_bare_responder(&url).await;
        let responder_only = RawSide {
            client: raw.client.clone(),
            subject: courier_nats::request_subject(&courier.topic),
            header: None,
        };
        // Warm-up: connections, streams, consumers, inboxes.
        raw.round(8, 20).await;
        raw_with_header.round(8, 20).await;
        courier.round(8, 20).await;
        requester_only.round(8, 20).await;
        responder_only.round(8, 20).await;

        let body = serde_json::to_vec(&ping(0)).expect("encode").len();
        let mut report = Report::new(format!(
            "NATS request/reply, {body} B JSON bodies, {rounds} rounds per concurrency, 2 worker threads"
        ));
        let variants: [(&str, &RawSide, &dyn Sided); 4] = [
            ("", &raw, &courier),
            (" (courier requester only)", &raw, &requester_only),
            (" (courier responder only)", &raw, &responder_only),
            (" (raw with one header)", &raw_with_header, &courier),
        ];
        // Words on the command line pick comparisons by their row label
        // (`full`, `requester`, `responder`, `header`); none runs all.
        let picked: Vec<String> = std::env::args()
            .skip(1)
            // Not counts, nor the `--bench` that `cargo bench` passes.
            .filter(|a| a.parse::<usize>().is_err() && !a.starts_with('-'))
            .collect();
        let wanted = |variant: &str| {
            picked.is_empty()
                || picked
                    .iter()
                    .any(|p| variant.contains(p.as_str()) || (p == "full" && variant.is_empty()))
        };
        for (concurrency, per_task) in PER_TASK {
            for (variant, raw, courier) in variants.into_iter().filter(|(v, ..)| wanted(v)) {
                let recorded = Arc::new(Mutex::new(Vec::new()));
                let per_second = interleaved(rounds, |side| {
                    let (raw, courier, recorded) = (raw, courier, recorded.clone());
                    async move {
                        let round = match side {
                            Side::Raw => raw.round(concurrency, per_task).await,
                            Side::Courier => courier.run(concurrency, per_task).await,
                        };
                        recorded.lock().expect("lock").push((side, round));
                        round.per_second
                    }
                })
                .await;
                let recorded = std::mem::take(&mut *recorded.lock().expect("lock"));
                for (name, unit, figure) in [
                    ("p50", Unit::Micros, (|r: &Round| r.p50) as fn(&Round) -> f64),
                    ("p99", Unit::Micros, |r: &Round| r.p99),
                    ("cpu/req", Unit::Micros, |r: &Round| r.cpu),
                    ("switches/req", Unit::PerMessage, |r: &Round| r.switches),
                ] {
                    let mut rounds_of = Rounds::default();
                    for (side, round) in &recorded {
                        match side {
                            Side::Raw => rounds_of.raw.push(figure(round)),
                            Side::Courier => rounds_of.courier.push(figure(round)),
                        }
                    }
                    report.push(Row::new(
                        "nats",
                        format!("request c={concurrency} {name}{variant}"),
                        body,
                        unit,
                        &rounds_of,
                    ));
                }
                report.push(Row::new(
                    "nats",
                    format!("request c={concurrency}{variant}"),
                    body,
                    Unit::MessagesPerSecond,
                    &per_second,
                ));
            }
        }
        report.finish();
        courier.stop().await;
    });
}

/// What the courier column of a comparison runs.
trait Sided: Sync {
    /// One round of `concurrency` tasks of `per_task` round trips.
    fn run(
        &self,
        concurrency: usize,
        per_task: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Round> + Send + '_>>;
}

/// `Sided` for the sides' own `round`.
macro_rules! sided_by_round {
    ($($side:ty),*) => {$(
        impl Sided for $side {
            fn run(
                &self,
                concurrency: usize,
                per_task: usize,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Round> + Send + '_>> {
                Box::pin(self.round(concurrency, per_task))
            }
        }
    )*};
}

sided_by_round!(RawSide, CourierSide);

/// Runs `concurrency` tasks of `per_task` sequential round trips each.
async fn measure<F, Fut>(concurrency: usize, per_task: usize, call: F) -> Round
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let cpu = courier_testkit::bench::cpu_used();
    let switches = courier_testkit::bench::times_scheduled();
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let at = Instant::now();
                    call((task * per_task + i) as u64).await;
                    latencies.push(at.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("task"));
    }
    let elapsed = started.elapsed();
    let cpu = courier_testkit::bench::cpu_used() - cpu;
    let switches = courier_testkit::bench::times_scheduled() - switches;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Round {
        p50: at(0.50).as_secs_f64() * 1e6,
        p99: at(0.99).as_secs_f64() * 1e6,
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        cpu: cpu.as_secs_f64() * 1e6 / latencies.len() as f64,
        switches: switches as f64 / latencies.len() as f64,
    }
}

/// Starts a bare responder on `subject` (in queue group `queue`, if
/// given): it answers each request with its body decoded and encoded again,
/// echoing the request's headers when `echo_headers` (so a courier
/// requester finds its request id). Returns once the server has the
/// subscription.
async fn start_bare_responder(url: &str, subject: String, queue: Option<&str>, echo_headers: bool) {
    let responder = async_nats::connect(url).await.expect("connect");
    let mut requests = match queue {
        Some(queue) => responder.queue_subscribe(subject, queue.to_owned()).await,
        None => responder.subscribe(subject).await,
    }
    .expect("subscribe");
    responder.flush().await.expect("flush");
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply else { continue };
            let body: Ping = serde_json::from_slice(&request.payload).expect("decode");
            let answer = serde_json::to_vec(&body).expect("encode");
            let sent = match request.headers.filter(|_| echo_headers) {
                Some(headers) => {
                    responder
                        .publish_with_headers(reply, headers, answer.into())
                        .await
                }
                None => responder.publish(reply, answer.into()).await,
            };
            sent.expect("reply");
        }
    });
}

/// async-nats's idiom: `Client::request` to a core subscriber that answers
/// each message's reply subject.
struct RawSide {
    client: async_nats::Client,
    subject: String,
    /// A `courier-fields` value every request carries (and its responder
    /// echoes), or none: the plain idiom.
    header: Option<&'static str>,
}

/// A `courier-fields` header value of the size a courier request carries
/// (id, timestamp, deadline).
const FIELDS_LIKE_COURIERS: &str =
    "id=0198c6a2-7f3e-7d2a-9b1c-3e4f5a6b7c8d;ts=1764200000000;dl=1764200005000;";

impl RawSide {
    /// A raw pair on a subject of its own; with `header`, every request
    /// carries it as `courier-fields` and the responder echoes it.
    async fn start(url: &str, header: Option<&'static str>) -> Self {
        let subject = courier_testkit::fixtures::unique_name("bench-raw-rr");
        start_bare_responder(url, subject.clone(), None, header.is_some()).await;
        let client = async_nats::connect(url).await.expect("connect");
        RawSide {
            client,
            subject,
            header,
        }
    }

    async fn round(&self, concurrency: usize, per_task: usize) -> Round {
        let client = self.client.clone();
        let subject = self.subject.clone();
        let header = self.header;
        measure(concurrency, per_task, move |seq| {
            let (client, subject) = (client.clone(), subject.clone());
            async move {
                let body = serde_json::to_vec(&ping(seq)).expect("encode");
                let reply = match header {
                    Some(fields) => {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("courier-fields", fields);
                        client
                            .request_with_headers(subject, headers, body.into())
                            .await
                    }
                    None => client.request(subject, body.into()).await,
                }
                .expect("reply");
                let answer: Ping = serde_json::from_slice(&reply.payload).expect("decode");
                assert_eq!(answer.seq, seq);
            }
        })
        .await
    }
}

/// courier: `Broker::request` to a `runtime::responder` consumer (or, for
/// the requester-only rows, to a bare responder).
struct CourierSide {
    requester: Broker,
    topic: String,
    responder: Option<runtime::RunningConsumer>,
}

impl CourierSide {
    async fn start(url: &str) -> Self {
        let topic = courier_testkit::fixtures::unique_name("bench-courier-rr");
        let responding = NatsBroker::connect(url)
            .await
            .expect("connect")
            .into_broker();
        let answer =
            runtime::responder(
                &responding,
                |ping: Envelope<Ping>| async move { Ok(ping.body) },
            );
        let responder = Consumer::builder(
            responding.clone(),
            Subscription::new(&topic, "bench"),
            answer,
        )
        .concurrency(64)
        .start()
        .await
        .expect("responder");
        let requester = NatsBroker::connect(url)
            .await
            .expect("connect")
            .into_broker();
        CourierSide {
            requester,
            topic,
            responder: Some(responder),
        }
    }

    /// The same requester, asking a topic a bare async-nats queue
    /// subscriber answers: it echoes the request's headers (the request
    /// id among them) with the re-encoded body.
    async fn against_a_bare_responder(&self, url: &str) -> CourierSide {
        let topic = courier_testkit::fixtures::unique_name("bench-bare-responder");
        let subject = courier_nats::request_subject(&topic);
        start_bare_responder(url, subject, Some("bench"), true).await;
        CourierSide {
            requester: self.requester.clone(),
            topic,
            responder: None,
        }
    }

    async fn round(&self, concurrency: usize, per_task: usize) -> Round {
        let requester = self.requester.clone();
        let topic: Arc<str> = self.topic.as_str().into();
        measure(concurrency, per_task, move |seq| {
            let (requester, topic) = (requester.clone(), topic.clone());
            async move {
                let message = Message::from_json(&ping(seq)).expect("encode");
                let reply = requester
                    .request(&topic, message, Duration::from_secs(30))
                    .await
                    .expect("reply");
                assert_eq!(reply.json::<Ping>().expect("decode").seq, seq);
            }
        })
        .await
    }

    async fn stop(self) {
        if let Some(responder) = self.responder {
            responder.shutdown().await.expect("shutdown");
        }
        self.requester.close().await.expect("close");
    }
}
