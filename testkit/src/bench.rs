//! Shared machinery for courier's benchmarks: courier and the raw client
//! side by side in one run, interleaved rounds, medians, ratios, one table
//! and JSON rows that two runs can be compared with.
//!
//! A shared machine moves absolute figures by 10 % or more between minutes,
//! so a benchmark never compares a courier figure with a raw figure taken at
//! another time. [`interleaved`] runs both sides in every round and swaps
//! who goes first from one round to the next (even rounds raw first, odd
//! rounds courier first); the figures reported are the medians of the
//! rounds, and the ratio is courier's median over raw's.
//!
//! ```
//! use courier_testkit::bench::{Report, Row, Side, Unit, interleaved};
//!
//! # tokio_test_block_on(async {
//! let rounds = interleaved(5, |side| async move {
//!     match side {
//!         Side::Raw => 100_000.0,
//!         Side::Courier => 98_000.0,
//!     }
//! })
//! .await;
//! assert_eq!(rounds.ratio(), 0.98);
//! let mut report = Report::new("example: 5 rounds");
//! report.push(Row::new("memory", "publish", 64, Unit::MessagesPerSecond, &rounds));
//! report.finish();
//! # });
//! # fn tokio_test_block_on(f: impl std::future::Future<Output = ()>) {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! With `COURIER_BENCH_OUT=<file>` set, [`Report::finish`] appends one JSON
//! object per row to that file (JSON lines); [`read_rows`] reads such a file
//! back, [`print_table`] prints rows, and [`compare`] prints how each row
//! moved between two runs.

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// The environment variable naming the JSON-lines file rows are appended to.
pub const OUT_ENV: &str = "COURIER_BENCH_OUT";

/// The environment variable setting how many interleaved rounds every
/// benchmark runs (`scripts/bench.sh` passes it on).
pub const ROUNDS_ENV: &str = "COURIER_BENCH_ROUNDS";

/// The environment variable that makes [`interleaved`] run one side only
/// (`raw` or `courier`), to profile or count that side alone
/// (`scripts/instructions.sh`); the other side's figures and every ratio
/// are then missing (NaN).
pub const SIDE_ENV: &str = "COURIER_BENCH_SIDE";

/// CPU time used so far by every live thread of this process, from the
/// scheduler's own nanosecond account (`/proc/self/task/*/schedstat`), for
/// figures that hold on a busy machine: wall-clock rates move with
/// whatever else the machine runs, CPU time per message much less so.
/// Measure with the same threads alive at both ends (a tokio runtime's
/// workers), since a thread that exits takes its time with it.
///
/// # Panics
///
/// When `/proc/self/task` cannot be read (not Linux).
pub fn cpu_used() -> Duration {
    Duration::from_nanos(schedstat_total(0))
}

/// How many times the threads of this process were scheduled onto a CPU
/// so far (the third field of each thread's `schedstat`): a count of
/// wake-ups and preemptions, for figures such as thread switches per
/// message. Threads that exited are not counted, as in [`cpu_used`].
///
/// # Panics
///
/// When `/proc/self/task` cannot be read (not Linux).
pub fn times_scheduled() -> u64 {
    schedstat_total(2)
}

/// Field `field` of `schedstat`, summed over the live threads of this
/// process.
fn schedstat_total(field: usize) -> u64 {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let Ok(task) = task else { continue };
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += stat
            .split_whitespace()
            .nth(field)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// The count in the environment variable `name`, or `default` when it is
/// unset or not a number.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The cases a benchmark's command line picks: every word after `--` that
/// is neither a number (the rounds, see [`rounds`]) nor an option (`--bench`,
/// `--mock`) picks the cases whose name contains it; none picks all
/// (`cargo bench --bench throughput -- consume`).
#[derive(Debug, Clone, Default)]
pub struct Cases {
    words: Vec<String>,
}

impl Cases {
    /// The words of this process's command line.
    pub fn from_args() -> Self {
        Cases {
            words: std::env::args()
                .skip(1)
                .filter(|a| a.parse::<usize>().is_err() && !a.starts_with("--"))
                .collect(),
        }
    }

    /// Whether the case named `case` runs.
    pub fn wanted(&self, case: &str) -> bool {
        self.words.is_empty() || self.words.iter().any(|w| case.contains(w.as_str()))
    }
}

/// How many interleaved rounds to run: the first number on the command
/// line (`cargo bench --bench latency -- 7`), else [`ROUNDS_ENV`], else
/// `default`; at least 1.
pub fn rounds(default: usize) -> usize {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or_else(|| env_or(ROUNDS_ENV, default))
        .max(1)
}

/// The runtime the broker benchmarks run on: multi-threaded with two
/// workers (this machine's two cores), timers and I/O enabled.
///
/// # Panics
///
/// When the runtime cannot be built (out of threads or file descriptors).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Which side of a comparison a round is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The broker's own client, used the way its documentation shows.
    Raw,
    /// The same work through courier.
    Courier,
}

/// The figures of every round, per side, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rounds {
    /// The raw client's figure of each round.
    pub raw: Vec<f64>,
    /// courier's figure of each round.
    pub courier: Vec<f64>,
}

impl Rounds {
    /// The median of the raw client's rounds.
    pub fn raw_median(&self) -> f64 {
        median(&self.raw)
    }

    /// The median of courier's rounds.
    pub fn courier_median(&self) -> f64 {
        median(&self.courier)
    }

    /// courier's median over the raw client's: above 1 means courier's
    /// figure is higher (better for a throughput, worse for a latency).
    pub fn ratio(&self) -> f64 {
        self.courier_median() / self.raw_median()
    }
}

/// The suffix of a row's name whose two sides both ran the raw client
/// (`against_itself`), empty otherwise. Such a row's ratio is what the
/// machine and the broker alone do to a ratio of two runs of the same
/// thing: a courier ratio inside its spread says nothing about courier.
pub fn against_itself(against_itself: bool) -> &'static str {
    if against_itself {
        ", raw against raw"
    } else {
        ""
    }
}

/// Runs `rounds` rounds of both sides and returns every round's figures.
///
/// `run(side)` does one measurement and returns its figure (messages per
/// second, microseconds, ...). Even rounds run the raw side first, odd
/// rounds courier first, so neither side always runs on a warmer (or more
/// tired) machine. With [`SIDE_ENV`] set, only that side runs.
///
/// # Panics
///
/// If [`SIDE_ENV`] is set to something other than `raw` or `courier`.
pub async fn interleaved<F, Fut>(rounds: usize, mut run: F) -> Rounds
where
    F: FnMut(Side) -> Fut,
    Fut: Future<Output = f64>,
{
    let only = std::env::var(SIDE_ENV)
        .ok()
        .map(|side| match side.as_str() {
            "raw" => Side::Raw,
            "courier" => Side::Courier,
            other => panic!("{SIDE_ENV}={other:?}: expected raw or courier"),
        });
    let mut figures = Rounds::default();
    for round in 0..rounds {
        let order = if round.is_multiple_of(2) {
            [Side::Raw, Side::Courier]
        } else {
            [Side::Courier, Side::Raw]
        };
        for side in order {
            if only.is_some_and(|only| only != side) {
                continue;
            }
            let figure = run(side).await;
            match side {
                Side::Raw => figures.raw.push(figure),
                Side::Courier => figures.courier.push(figure),
            }
        }
    }
    figures
}

/// The median of `values` (the mean of the two middle values for an even
/// count); NaN for none.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

/// Messages per second for `count` messages in `elapsed`.
pub fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// What a row's figures measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Throughput: higher is better.
    MessagesPerSecond,
    /// A latency in microseconds: lower is better.
    Micros,
    /// A cost in nanoseconds per message: lower is better.
    NanosPerMessage,
    /// A memory figure in bytes: lower is better.
    Bytes,
    /// A count of events (thread wake-ups, say) per message: lower is
    /// better.
    PerMessage,
}

impl Unit {
    /// Whether a higher figure is the better one.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Unit::MessagesPerSecond)
    }

    fn label(self) -> &'static str {
        match self {
            Unit::MessagesPerSecond => "msg/s",
            Unit::Micros => "us",
            Unit::NanosPerMessage => "ns/msg",
            Unit::Bytes => "bytes",
            Unit::PerMessage => "/msg",
        }
    }
}

/// One line of a benchmark's result: a case on one adapter, raw against
/// courier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The adapter (`memory`, `amqp`, `kafka`, `nats`).
    pub adapter: String,
    /// What was measured, e.g. `publish confirmed` or `runtime c=16 keys=16`.
    pub case: String,
    /// Payload size in bytes.
    pub payload: usize,
    /// The unit of `raw` and `courier`.
    pub unit: Unit,
    /// The raw client's median; NaN (`null` in JSON) when the broker has
    /// no raw idiom for the case.
    #[serde(deserialize_with = "nan_for_null")]
    pub raw: f64,
    /// courier's median.
    pub courier: f64,
    /// courier over raw; NaN (`null` in JSON) without a raw figure.
    #[serde(deserialize_with = "nan_for_null")]
    pub ratio: f64,
    /// How many rounds each median is taken over.
    pub rounds: usize,
}

impl Row {
    /// A row from the medians of `rounds`.
    pub fn new(
        adapter: impl Into<String>,
        case: impl Into<String>,
        payload: usize,
        unit: Unit,
        rounds: &Rounds,
    ) -> Self {
        Row {
            adapter: adapter.into(),
            case: case.into(),
            payload,
            unit,
            raw: rounds.raw_median(),
            courier: rounds.courier_median(),
            ratio: rounds.ratio(),
            rounds: rounds.raw.len().min(rounds.courier.len()),
        }
    }

    /// `(adapter, case, payload)`: what identifies a row across runs.
    pub fn key(&self) -> (&str, &str, usize) {
        (&self.adapter, &self.case, self.payload)
    }
}

/// Reads a figure that JSON holds as `null` when it was NaN (serde_json
/// writes non-finite numbers as `null`).
fn nan_for_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// The rows of one benchmark run, printed as one table.
#[derive(Debug)]
pub struct Report {
    title: String,
    rows: Vec<Row>,
}

impl Report {
    /// An empty report; `title` heads its table (say what was run: counts,
    /// payloads, threads, rounds).
    pub fn new(title: impl Into<String>) -> Self {
        Report {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// Adds a row and prints it at once, so a long run shows progress.
    pub fn push(&mut self, row: Row) {
        println!("  {}", format_row(&row));
        self.rows.push(row);
    }

    /// The rows so far.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Prints the table and appends the rows to the file named by
    /// [`OUT_ENV`], if set (not for a run of one side, [`SIDE_ENV`]: its
    /// rows compare nothing).
    ///
    /// # Panics
    ///
    /// If that file cannot be written: a benchmark run whose results are
    /// lost should say so loudly.
    pub fn finish(self) {
        println!("\n{}", self.title);
        print_table(&self.rows);
        if let Some(path) = std::env::var_os(OUT_ENV)
            && std::env::var_os(SIDE_ENV).is_none()
        {
            append_rows(Path::new(&path), &self.rows)
                .unwrap_or_else(|e| panic!("writing {}: {e}", Path::new(&path).display()));
        }
    }
}

/// Appends `rows` to `path` as JSON lines.
///
/// # Errors
///
/// The file cannot be opened or written.
pub fn append_rows(path: &Path, rows: &[Row]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for row in rows {
        let line = serde_json::to_string(row).map_err(std::io::Error::other)?;
        writeln!(file, "{line}")?;
    }
    Ok(())
}

/// Reads the rows of a JSON-lines file written by [`Report::finish`].
///
/// # Errors
///
/// The file cannot be read, or a line is not a row (the error names the
/// line).
pub fn read_rows(path: &Path) -> std::io::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            serde_json::from_str(line).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}:{}: {e}", path.display(), number + 1),
                )
            })
        })
        .collect()
}

const HEADER: &str = "adapter  case                                payload          raw      courier  unit      courier/raw";

fn format_row(row: &Row) -> String {
    format!(
        "{:<8} {:<35} {:>7} {:>12} {:>12}  {:<8} {:>6}{}",
        row.adapter,
        row.case,
        format_bytes(row.payload),
        format_figure(row.raw),
        format_figure(row.courier),
        row.unit.label(),
        format_ratio(row.ratio),
        if row.unit.higher_is_better() {
            ""
        } else {
            " (lower is better)"
        },
    )
}

/// Prints `rows` as one aligned table, in their order.
pub fn print_table(rows: &[Row]) {
    println!("{HEADER}");
    for row in rows {
        println!("{}", format_row(row));
    }
}

/// Prints, for every row of `new` also in `old` (same adapter, case and
/// payload), how courier's figure and the ratio moved.
pub fn compare(old: &[Row], new: &[Row]) {
    println!(
        "{:<8} {:<35} {:>7} {:>12} {:>12} {:>8} {:>9} {:>9}",
        "adapter",
        "case",
        "payload",
        "courier old",
        "courier new",
        "change",
        "ratio old",
        "ratio new"
    );
    for row in new {
        let Some(before) = old.iter().find(|o| o.key() == row.key()) else {
            continue;
        };
        println!(
            "{:<8} {:<35} {:>7} {:>12} {:>12} {:>+7.1}% {:>9} {:>9}",
            row.adapter,
            row.case,
            format_bytes(row.payload),
            format_figure(before.courier),
            format_figure(row.courier),
            (row.courier / before.courier - 1.0) * 100.0,
            format_ratio(before.ratio),
            format_ratio(row.ratio),
        );
    }
}

fn format_bytes(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

fn format_figure(figure: f64) -> String {
    if figure.is_nan() {
        "-".to_owned()
    } else if figure.abs() >= 100.0 {
        format!("{figure:.0}")
    } else {
        format!("{figure:.2}")
    }
}

fn format_ratio(ratio: f64) -> String {
    if ratio.is_nan() {
        "-".to_owned()
    } else {
        format!("{ratio:.2}")
    }
}

/// A fixed send schedule for open-loop latency: message `i` is due at
/// `start + i / rate`, whatever happened to the messages before it.
///
/// Latency is measured from when a message was *due*, not from when it was
/// sent: a sender held up by a slow broker does not hide the delay
/// (coordinated omission).
#[derive(Debug, Clone, Copy)]
pub struct OpenLoop {
    start: Instant,
    interval: Duration,
}

impl OpenLoop {
    /// A schedule of `rate_per_second` messages a second, starting now.
    ///
    /// # Panics
    ///
    /// If `rate_per_second` is zero.
    pub fn new(rate_per_second: u32) -> Self {
        assert!(rate_per_second > 0, "an open-loop rate must be positive");
        OpenLoop {
            start: Instant::now(),
            interval: Duration::from_secs(1) / rate_per_second,
        }
    }

    /// When message `index` is due.
    pub fn due(&self, index: usize) -> Instant {
        self.start + self.interval * u32::try_from(index).unwrap_or(u32::MAX)
    }

    /// Waits until message `index` is due (at once if it is late).
    pub async fn wait_due(&self, index: usize) {
        tokio::time::sleep_until(self.due(index).into()).await;
    }
}

/// Latency samples, with percentiles.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
    sorted: bool,
}

impl Latencies {
    /// Room for `count` samples.
    pub fn with_capacity(count: usize) -> Self {
        Latencies {
            samples: Vec::with_capacity(count),
            sorted: true,
        }
    }

    /// Records one message, due at `due` and received at `received`.
    pub fn record(&mut self, due: Instant, received: Instant) {
        self.push(received.saturating_duration_since(due));
    }

    /// Records one latency.
    pub fn push(&mut self, latency: Duration) {
        self.samples.push(latency);
        self.sorted = false;
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `quantile` (0.5 for the median, 0.999 for p99.9), nearest rank;
    /// zero without samples.
    pub fn percentile(&mut self, quantile: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        if !self.sorted {
            self.samples.sort_unstable();
            self.sorted = true;
        }
        let rank = (quantile.clamp(0.0, 1.0) * self.samples.len() as f64).ceil() as usize;
        self.samples[rank.saturating_sub(1).min(self.samples.len() - 1)]
    }

    /// The `quantile` in microseconds, for a [`Unit::Micros`] row.
    pub fn micros(&mut self, quantile: f64) -> f64 {
        self.percentile(quantile).as_secs_f64() * 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_picked_by_a_part_of_their_name() {
        let all = Cases::default();
        assert!(all.wanted("consume+commit") && all.wanted("runtime c=1"));
        let consume = Cases {
            words: vec!["consume".to_owned()],
        };
        assert!(consume.wanted("consume+commit"));
        assert!(consume.wanted("consume+commit, raw reads headers"));
        assert!(!consume.wanted("runtime c=1"));
        assert!(!consume.wanted("publish confirmed w=1000"));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[tokio::test]
    async fn rounds_alternate_who_goes_first() {
        let mut order = Vec::new();
        let rounds = interleaved(4, |side| {
            order.push(side);
            async move { if side == Side::Raw { 10.0 } else { 5.0 } }
        })
        .await;
        use Side::{Courier, Raw};
        assert_eq!(
            order,
            [Raw, Courier, Courier, Raw, Raw, Courier, Courier, Raw]
        );
        assert_eq!(rounds.raw, [10.0; 4]);
        assert_eq!(rounds.ratio(), 0.5);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut latencies = Latencies::with_capacity(1000);
        for micros in 1..=1000 {
            latencies.push(Duration::from_micros(micros));
        }
        assert_eq!(latencies.percentile(0.5), Duration::from_micros(500));
        assert_eq!(latencies.percentile(0.99), Duration::from_micros(990));
        assert_eq!(latencies.percentile(0.999), Duration::from_micros(999));
        assert_eq!(latencies.percentile(1.0), Duration::from_micros(1000));
    }

    #[test]
    fn open_loop_schedule_is_fixed() {
        let schedule = OpenLoop::new(1000);
        assert_eq!(
            schedule.due(250) - schedule.due(0),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn rows_survive_a_json_round_trip() {
        let rounds = Rounds {
            raw: vec![100.0, 110.0, 90.0],
            courier: vec![95.0, 99.0, 97.0],
        };
        let row = Row::new(
            "nats",
            "publish confirmed",
            16 * 1024,
            Unit::MessagesPerSecond,
            &rounds,
        );
        assert_eq!(row.raw, 100.0);
        assert_eq!(row.courier, 97.0);
        assert_eq!(row.rounds, 3);
        let dir = std::env::temp_dir().join(format!("courier-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rows.jsonl");
        append_rows(&file, std::slice::from_ref(&row)).unwrap();
        append_rows(&file, std::slice::from_ref(&row)).unwrap();
        assert_eq!(read_rows(&file).unwrap(), vec![row.clone(), row]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_row_without_a_raw_figure_survives_a_json_round_trip() {
        let rounds = Rounds {
            raw: vec![f64::NAN; 3],
            courier: vec![950.0, 990.0, 970.0],
        };
        let row = Row::new("kafka", "request c=1 p50", 60, Unit::Micros, &rounds);
        assert!(row.raw.is_nan() && row.ratio.is_nan());
        let dir = std::env::temp_dir().join(format!("courier-bench-nan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rows.jsonl");
        append_rows(&file, std::slice::from_ref(&row)).unwrap();
        let back = read_rows(&file).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        assert_eq!(back.len(), 1);
        assert!(back[0].raw.is_nan() && back[0].ratio.is_nan());
        assert_eq!((back[0].courier, back[0].rounds), (970.0, 3));
        assert_eq!(format_figure(back[0].raw), "-");
        assert_eq!(format_ratio(back[0].ratio), "-");
    }
}
