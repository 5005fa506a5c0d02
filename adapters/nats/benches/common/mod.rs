//! Stand-in for `courier_testkit::bench` until it is available: the same
//! calls, so the benches switch by changing one `use`.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Raw,
    Courier,
}

#[derive(Debug, Clone, Default)]
pub struct Rounds {
    pub raw: Vec<f64>,
    pub courier: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

impl Rounds {
    pub fn raw_median(&self) -> f64 {
        median(&self.raw)
    }
    pub fn courier_median(&self) -> f64 {
        median(&self.courier)
    }
    pub fn ratio(&self) -> f64 {
        self.courier_median() / self.raw_median()
    }
}

pub async fn interleaved<F, Fut>(rounds: usize, mut run: F) -> Rounds
where
    F: FnMut(Side) -> Fut,
    Fut: Future<Output = f64>,
{
    let mut out = Rounds::default();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Side::Raw, Side::Courier]
        } else {
            [Side::Courier, Side::Raw]
        };
        for side in order {
            let figure = run(side).await;
            match side {
                Side::Raw => out.raw.push(figure),
                Side::Courier => out.courier.push(figure),
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
pub enum Unit {
    MessagesPerSecond,
    Micros,
}

#[derive(Debug, Clone)]
pub struct Row {
    adapter: String,
    case: String,
    payload: usize,
    unit: Unit,
    raw: f64,
    courier: f64,
}

impl Row {
    pub fn new(adapter: &str, case: &str, payload: usize, unit: Unit, rounds: &Rounds) -> Self {
        Row {
            adapter: adapter.into(),
            case: case.into(),
            payload,
            unit,
            raw: rounds.raw_median(),
            courier: rounds.courier_median(),
        }
    }
}

pub struct Report {
    title: String,
    rows: Vec<Row>,
}

impl Report {
    pub fn new(title: &str) -> Self {
        Report {
            title: title.into(),
            rows: Vec::new(),
        }
    }
    pub fn push(&mut self, row: Row) {
        let unit = match row.unit {
            Unit::MessagesPerSecond => "msg/s",
            Unit::Micros => "us",
        };
        println!(
            "  {:<6} {:<34} {:>6} B {:>12.1} {:>12.1} {:<5} ratio {:.3}",
            row.adapter,
            row.case,
            row.payload,
            row.raw,
            row.courier,
            unit,
            row.courier / row.raw
        );
        self.rows.push(row);
    }
    pub fn finish(self) {
        println!("{} done: {} rows", self.title, self.rows.len());
    }
}

pub struct OpenLoop {
    start: Instant,
    interval: Duration,
}

impl OpenLoop {
    pub fn new(rate_per_second: u32) -> Self {
        OpenLoop {
            start: Instant::now(),
            interval: Duration::from_secs(1) / rate_per_second,
        }
    }
    pub fn due(&self, i: usize) -> Instant {
        self.start + self.interval * i as u32
    }
    pub async fn wait_due(&self, i: usize) {
        tokio::time::sleep_until(self.due(i).into()).await;
    }
}

#[derive(Debug, Default)]
pub struct Latencies {
    micros: Vec<f64>,
}

impl Latencies {
    pub fn record(&mut self, due: Instant, received: Instant) {
        self.micros
            .push(received.saturating_duration_since(due).as_secs_f64() * 1e6);
    }
    pub fn percentile(&self, q: f64) -> f64 {
        let mut v = self.micros.clone();
        v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
        v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
    }
}
