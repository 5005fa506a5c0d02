//! Measurements every broker benchmark makes the same way on courier's
//! side, on top of [`crate::bench`]: the consumer runtime draining a
//! backlog, an open-loop publish-to-receive latency run, and the
//! percentiles of such runs collected into rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use courier_core::runtime::{Consumer, raw};
use courier_core::{DeliveryStream, Message, Publisher, Subscriber, Subscription};
use futures::StreamExt;

use crate::bench::{Latencies, OpenLoop, Rounds, Row, Side, Unit, rate};

/// The payload index of warm-up messages, which [`courier_open_loop`]
/// skips: publish such messages until one arrives to know a consumer
/// group has joined before the schedule starts.
pub const WARM_UP_INDEX: usize = usize::MAX >> 1;

/// A payload of `size` bytes (at least 8) that starts with `index`, for
/// latency runs that find a message's due time from its payload.
pub fn indexed_payload(size: usize, index: usize) -> Vec<u8> {
    let mut payload = vec![7u8; size.max(8)];
    payload[..8].copy_from_slice(&(index as u64).to_le_bytes());
    payload
}

/// The index an [`indexed_payload`] starts with.
///
/// # Panics
///
/// If `payload` is shorter than 8 bytes.
pub fn payload_index(payload: &[u8]) -> usize {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&payload[..8]);
    u64::from_le_bytes(bytes) as usize
}

/// Where a [`runtime_rate`] run starts its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateClock {
    /// When the consumer is started (subscribing included); all `count`
    /// messages are counted.
    FromStart,
    /// When the first message is handled; the other `count - 1` are
    /// counted. For a broker whose first delivery to a new group waits a
    /// fixed delay that would otherwise be all the rate shows (librdkafka's
    /// mock cluster waits 3 s before a group's first assignment).
    FromFirst,
}

/// Messages per second of the courier consumer runtime handling `count`
/// messages already waiting for `subscription` with a handler that does
/// nothing, at `concurrency` and `prefetch` (the runtime's default when
/// `None`); timed as `clock` says to the last handled.
///
/// # Panics
///
/// If the consumer cannot start, or handles nothing for `stall`; with
/// [`RateClock::FromFirst`], if `count` is below 2.
pub async fn runtime_rate(
    subscriber: Arc<dyn Subscriber>,
    subscription: Subscription,
    count: usize,
    concurrency: usize,
    prefetch: Option<u16>,
    stall: Duration,
    clock: RateClock,
) -> f64 {
    assert!(
        clock == RateClock::FromStart || count >= 2,
        "a rate from the first message needs two"
    );
    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let first = match clock {
        RateClock::FromStart => None,
        RateClock::FromFirst => Some(Arc::new(std::sync::OnceLock::<Instant>::new())),
    };
    let first_handled = first.clone();
    let handler = raw({
        let handled = handled.clone();
        let done = done.clone();
        move |_message: Message| {
            let handled = handled.clone();
            let done = done.clone();
            let first = first.clone();
            async move {
                let now_handled = handled.fetch_add(1, Ordering::Relaxed) + 1;
                if now_handled == 1
                    && let Some(first) = first
                {
                    first.get_or_init(Instant::now);
                }
                if now_handled == count {
                    done.notify_one();
                }
                Ok(())
            }
        }
    });
    let started = Instant::now();
    let mut builder = Consumer::builder(subscriber, subscription, handler).concurrency(concurrency);
    if let Some(prefetch) = prefetch {
        builder = builder.prefetch(prefetch);
    }
    let running = builder.start().await.expect("start consumer");
    let mut last = 0;
    loop {
        match tokio::time::timeout(stall, done.notified()).await {
            Ok(()) => break,
            Err(_) => {
                let now = handled.load(Ordering::Relaxed);
                assert!(now > last, "runtime stalled at {now} of {count}");
                last = now;
            }
        }
    }
    let (started, timed) = match first_handled {
        None => (started, count),
        Some(first) => (*first.get().expect("handled one"), count - 1),
    };
    let elapsed = started.elapsed();
    running.shutdown().await.expect("shutdown");
    rate(timed, elapsed)
}

/// Open loop through courier: `count` messages of `size` bytes published
/// to `topic` at `per_second` (each publish awaited without holding up the
/// schedule), received and acked on `stream`; latency from when each was
/// due to when it arrived. Messages on `stream` whose payload index is not
/// below `count` (warm-up markers, see [`WARM_UP_INDEX`]) are acked and
/// not counted.
///
/// # Panics
///
/// If a publish or ack fails, or nothing arrives for `stall`.
pub async fn courier_open_loop(
    publisher: &(impl Publisher + ?Sized),
    topic: &str,
    stream: &mut DeliveryStream,
    size: usize,
    count: usize,
    per_second: u32,
    stall: Duration,
) -> Latencies {
    let schedule = OpenLoop::new(per_second);
    let publishing = async {
        let mut publishes = futures::stream::FuturesUnordered::new();
        for i in 0..count {
            // Publishes in flight are polled all the while until the next
            // is due: a publish future sends its message only as it is
            // polled, so leaving them unpolled while waiting would hold
            // their messages back and add the wait to their latency.
            loop {
                tokio::select! {
                    () = schedule.wait_due(i) => break,
                    Some(outcome) = publishes.next(), if !publishes.is_empty() => {
                        let outcome: courier_core::Result<()> = outcome;
                        outcome.expect("publish");
                    }
                }
            }
            publishes.push(publisher.publish(topic, Message::new(indexed_payload(size, i))));
        }
        while let Some(outcome) = publishes.next().await {
            outcome.expect("publish");
        }
    };
    let consuming = async {
        let mut latencies = Latencies::with_capacity(count);
        while latencies.len() < count {
            let delivery = tokio::time::timeout(stall, stream.next())
                .await
                .expect("courier latency consume stalled")
                .expect("open")
                .expect("delivery");
            let index = payload_index(delivery.message().payload());
            if index < count {
                latencies.record(schedule.due(index), Instant::now());
            }
            delivery.ack().await.expect("ack");
        }
        latencies
    };
    let ((), latencies) = futures::join!(publishing, consuming);
    latencies
}

/// p50, p99 and p99.9 of latency runs, per side, one figure per run.
#[derive(Debug, Default)]
pub struct Percentiles {
    rounds: [Rounds; 3],
}

const QUANTILES: [(f64, &str); 3] = [(0.5, "p50"), (0.99, "p99"), (0.999, "p999")];

impl Percentiles {
    /// Adds one run of `side`.
    pub fn push(&mut self, side: Side, latencies: &mut Latencies) {
        for (rounds, (quantile, _)) in self.rounds.iter_mut().zip(QUANTILES) {
            let figure = latencies.micros(quantile);
            match side {
                Side::Raw => rounds.raw.push(figure),
                Side::Courier => rounds.courier.push(figure),
            }
        }
    }

    /// One row per percentile, named `latency <pNN> <suffix>`.
    pub fn rows(&self, adapter: &str, suffix: &str, payload: usize) -> Vec<Row> {
        self.rounds
            .iter()
            .zip(QUANTILES)
            .map(|(rounds, (_, name))| {
                let case = format!("latency {name} {suffix}");
                Row::new(adapter, case, payload, Unit::Micros, rounds)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_index_round_trips() {
        let payload = indexed_payload(64, 12_345);
        assert_eq!(payload.len(), 64);
        assert_eq!(payload_index(&payload), 12_345);
        assert_eq!(indexed_payload(2, 1).len(), 8);
    }

    #[test]
    fn percentiles_give_a_row_each() {
        let mut percentiles = Percentiles::default();
        let mut latencies = Latencies::with_capacity(1000);
        for micros in 1..=1000 {
            latencies.push(Duration::from_micros(micros));
        }
        percentiles.push(Side::Raw, &mut latencies.clone());
        percentiles.push(Side::Courier, &mut latencies);
        let rows = percentiles.rows("memory", "@1000/s", 64);
        let cases: Vec<_> = rows.iter().map(|r| r.case.as_str()).collect();
        assert_eq!(
            cases,
            [
                "latency p50 @1000/s",
                "latency p99 @1000/s",
                "latency p999 @1000/s"
            ]
        );
        assert_eq!(rows[1].raw.round(), 990.0);
        assert_eq!(rows[2].courier.round(), 999.0);
    }
}
