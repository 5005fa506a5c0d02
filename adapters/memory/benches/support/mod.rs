//! Interleaved rounds, medians and the result table, until the shared
//! `courier_testkit::bench` module is available to these benches.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::future::Future;

/// Which side a round measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The raw client (here: a bare loop, or telemetry off).
    Raw,
    /// courier.
    Courier,
}

/// The figures of every round, per side.
#[derive(Debug, Default)]
pub struct Rounds {
    pub raw: Vec<f64>,
    pub courier: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
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

/// Runs `rounds` rounds of both sides, raw first in even rounds.
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
            let value = run(side).await;
            match side {
                Side::Raw => out.raw.push(value),
                Side::Courier => out.courier.push(value),
            }
        }
    }
    out
}

/// The unit of a row's figures.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    MessagesPerSecond,
    Micros,
}

/// One line of the table.
#[derive(Debug)]
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

/// The table of one bench.
#[derive(Debug)]
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
        self.rows.push(row);
    }
    pub fn finish(self) {
        println!("{}", self.title);
        println!(
            "{:<8} {:<30} {:>7} {:>14} {:>14} {:>7}",
            "adapter", "case", "payload", "raw", "courier", "ratio"
        );
        for row in &self.rows {
            let unit = match row.unit {
                Unit::MessagesPerSecond => "msg/s",
                Unit::Micros => "us",
            };
            println!(
                "{:<8} {:<30} {:>7} {:>8.0} {unit:<5} {:>8.0} {unit:<5} {:>7.3}",
                row.adapter,
                row.case,
                row.payload,
                row.raw,
                row.courier,
                row.courier / row.raw
            );
        }
    }
}
