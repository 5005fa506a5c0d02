//! Request/reply round trips for the benchmarks: courier's
//! [`Broker::request`] answered by a [`runtime::responder`] consumer,
//! against the raw client's own request/reply idiom where the broker has
//! one, in one run (see [`crate::bench`] for the interleaving).
//!
//! A round runs `concurrency` tasks, each making its share of round trips
//! one after another, and reports the round trips' p50 and p99, the rate,
//! and the process's CPU time and thread wake-ups per round trip (the
//! requester and the responder both run in the benchmark's process). Every
//! request carries a [`Ping`] as JSON and every reply must carry the same
//! `seq` back: a crossed reply fails the run.
//!
//! Where a broker has no raw idiom (Kafka), [`compare`] runs courier's side
//! alone and the raw column and the ratio of its rows are empty.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_core::runtime::{self, Consumer, Envelope, RunningConsumer};
use courier_core::{Broker, Message, Subscription};
use serde::{Deserialize, Serialize};

use crate::bench::{Report, Rounds, Row, Side, Unit, interleaved};

/// The rounds' usual shapes: `(concurrency, round trips per task)`.
pub const PER_TASK: [(usize, usize); 2] = [(1, 1_000), (64, 60)];

/// What courier waits for a reply; a round trip this slow fails the run.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The body of every request and of its reply (about 60 bytes of JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Which round trip this is; a reply must carry its request's.
    pub seq: u64,
    /// Padding to a realistic small body.
    pub pad: String,
}

/// The request body of round trip `seq`.
pub fn ping(seq: u64) -> Ping {
    Ping {
        seq,
        pad: "x".repeat(40),
    }
}

/// The size of a request body in bytes, for the rows' payload column.
pub fn body_size() -> usize {
    serde_json::to_vec(&ping(0)).map_or(0, |body| body.len())
}

/// Checks that a reply body is round trip `seq`'s.
///
/// # Panics
///
/// If it is not JSON of a [`Ping`] carrying `seq`.
pub fn check_body(seq: u64, body: &[u8]) {
    let answer: Ping = serde_json::from_slice(body).expect("decode the reply");
    assert_eq!(answer.seq, seq, "a reply crossed");
}

/// Waits at most [`TIMEOUT`] for round trip `seq`'s reply body on
/// `answered` and checks it ([`check_body`]).
///
/// # Panics
///
/// If no reply came in time, or it is not `seq`'s.
pub async fn check_reply<B: AsRef<[u8]>>(seq: u64, answered: tokio::sync::oneshot::Receiver<B>) {
    let body = tokio::time::timeout(TIMEOUT, answered)
        .await
        .expect("reply in time")
        .expect("reply");
    check_body(seq, body.as_ref());
}

/// One round's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    /// Microseconds.
    pub p50: f64,
    /// Microseconds.
    pub p99: f64,
    /// Round trips per second.
    pub per_second: f64,
    /// CPU microseconds of this whole process (requester and responder)
    /// per round trip.
    pub cpu: f64,
    /// Times the process's threads were scheduled onto a CPU, per round
    /// trip (wake-ups: each hand-off between threads costs one).
    pub switches: f64,
}

/// A boxed round.
pub type RoundFuture<'a> = Pin<Box<dyn Future<Output = Round> + Send + 'a>>;

/// One side of a comparison: something that makes round trips.
pub trait RoundTrips: Sync {
    /// One round of `concurrency` tasks of `per_task` round trips each.
    fn round(&self, concurrency: usize, per_task: usize) -> RoundFuture<'_>;
}

/// Runs `concurrency` tasks of `per_task` sequential round trips each;
/// `call(seq)` makes round trip `seq` (unique within the round).
///
/// # Panics
///
/// If a task panics (a round trip failed).
pub async fn measure<F, Fut>(concurrency: usize, per_task: usize, call: F) -> Round
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let cpu = crate::bench::cpu_used();
    let switches = crate::bench::times_scheduled();
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
    let mut latencies = Vec::with_capacity(concurrency * per_task);
    for task in tasks {
        latencies.extend(task.await.expect("round trip task"));
    }
    let elapsed = started.elapsed();
    let cpu = crate::bench::cpu_used() - cpu;
    let switches = crate::bench::times_scheduled() - switches;
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

/// courier's side: [`Broker::request`] to a topic, answered by a
/// [`runtime::responder`] consumer (or, with [`CourierPair::asking`], by
/// whatever listens there).
#[derive(Debug)]
pub struct CourierPair {
    requester: Broker,
    topic: String,
    responder: Option<RunningConsumer>,
}

impl CourierPair {
    /// Starts a responder on `responding` for `topic` (group `bench`,
    /// concurrency 64, echoing each request's body) and asks it through
    /// `requester`.
    ///
    /// # Panics
    ///
    /// If the responder does not start.
    pub async fn start(responding: &Broker, requester: Broker, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        let answer = runtime::responder(
            responding,
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
        CourierPair {
            requester,
            topic,
            responder: Some(responder),
        }
    }

    /// Asks `topic` through `requester`, where something else answers.
    pub fn asking(requester: Broker, topic: impl Into<String>) -> Self {
        CourierPair {
            requester,
            topic: topic.into(),
            responder: None,
        }
    }

    /// The topic requests go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The requesting broker.
    pub fn requester(&self) -> &Broker {
        &self.requester
    }

    /// Shuts the responder down (if this pair started one) and closes the
    /// requester.
    ///
    /// # Panics
    ///
    /// If either fails.
    pub async fn stop(self) {
        if let Some(responder) = self.responder {
            responder.shutdown().await.expect("responder shutdown");
        }
        self.requester.close().await.expect("close");
    }
}

impl RoundTrips for CourierPair {
    fn round(&self, concurrency: usize, per_task: usize) -> RoundFuture<'_> {
        let requester = self.requester.clone();
        let topic: Arc<str> = self.topic.as_str().into();
        Box::pin(measure(concurrency, per_task, move |seq| {
            let (requester, topic) = (requester.clone(), topic.clone());
            async move {
                let message = Message::from_json(&ping(seq)).expect("encode");
                let reply = requester
                    .request(&topic, message, TIMEOUT)
                    .await
                    .expect("reply");
                assert_eq!(reply.json::<Ping>().expect("decode").seq, seq);
            }
        }))
    }
}

/// Warms both sides up (connections, consumers, reply paths): one round
/// of 8 tasks of 20 round trips each.
pub async fn warm_up(sides: &[&dyn RoundTrips]) {
    for side in sides {
        side.round(8, 20).await;
    }
}

/// Reads one figure of a round.
type Figure = fn(&Round) -> f64;

/// Runs both sides at every shape (`(concurrency, round trips per task)`,
/// usually [`PER_TASK`]), `rounds` interleaved rounds each, and pushes the
/// rows: `request c=N` (round trips a second) and
/// `request c=N p50`, `p99`, `cpu/req` (microseconds), `switches/req`,
/// each label followed by `variant` (empty, or a parenthesised note that
/// tells comparisons apart). With no `raw` side only courier's rounds run.
pub async fn compare(
    report: &mut Report,
    adapter: &str,
    rounds: usize,
    variant: &str,
    shapes: &[(usize, usize)],
    raw: Option<&dyn RoundTrips>,
    courier: &dyn RoundTrips,
) {
    let body = body_size();
    for &(concurrency, per_task) in shapes {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let per_second = interleaved(rounds, |side| {
            let recorded = recorded.clone();
            async move {
                let round = match (side, raw) {
                    (Side::Raw, Some(raw)) => raw.round(concurrency, per_task).await,
                    (Side::Raw, None) => return f64::NAN,
                    (Side::Courier, _) => courier.round(concurrency, per_task).await,
                };
                recorded.lock().expect("lock").push((side, round));
                round.per_second
            }
        })
        .await;
        let recorded = std::mem::take(&mut *recorded.lock().expect("lock"));
        let figures: [(&str, Unit, Figure); 4] = [
            ("p50", Unit::Micros, |r| r.p50),
            ("p99", Unit::Micros, |r| r.p99),
            ("cpu/req", Unit::Micros, |r| r.cpu),
            ("switches/req", Unit::PerMessage, |r| r.switches),
        ];
        for (name, unit, figure) in figures {
            let mut of_rounds = Rounds::default();
            for (side, round) in &recorded {
                match side {
                    Side::Raw => of_rounds.raw.push(figure(round)),
                    Side::Courier => of_rounds.courier.push(figure(round)),
                }
            }
            if raw.is_none() {
                of_rounds.raw = vec![f64::NAN; of_rounds.courier.len()];
            }
            report.push(Row::new(
                adapter,
                format!("request c={concurrency} {name}{variant}"),
                body,
                unit,
                &of_rounds,
            ));
        }
        report.push(Row::new(
            adapter,
            format!("request c={concurrency}{variant}"),
            body,
            Unit::MessagesPerSecond,
            &per_second,
        ));
    }
}
