//! The log lines a test's code emits, kept as text so a test can wait for
//! an adapter's own account of what happened (a partition assigned,
//! fetching paused), with a deadline.
//!
//! ```no_run
//! use courier_testkit::log_lines::LogLines;
//!
//! # async fn demo() {
//! let lines = LogLines::capture("courier_kafka", tracing::Level::DEBUG);
//! // ...
//! lines
//!     .wait_for("kafka partition assigned", "group=orders", 1, std::time::Duration::from_secs(60))
//!     .await;
//! # }
//! ```

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;

/// A `tracing` layer that keeps every event as one line: its message, then
/// ` name=value` for each field (`kafka partition assigned topic=t group=g`).
#[derive(Clone, Debug, Default)]
pub struct LogLines(Arc<Mutex<Vec<String>>>);

impl LogLines {
    /// Keeps the events of `target` (and its modules) at `level` and
    /// above, as the process's global subscriber (one per test binary).
    ///
    /// # Panics
    ///
    /// When the process has a global subscriber already.
    pub fn capture(target: &str, level: tracing::Level) -> Self {
        let lines = Self::default();
        let targets = Targets::new().with_target(target, level);
        let subscriber = tracing_subscriber::registry().with(lines.clone().with_filter(targets));
        tracing::subscriber::set_global_default(subscriber).expect("no global subscriber yet");
        lines
    }

    /// Lines that start with `message` and contain `with` (a field, such
    /// as `group=orders`, or an empty string).
    pub fn count(&self, message: &str, with: &str) -> usize {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|line| line.starts_with(message) && line.contains(with))
            .count()
    }

    /// Waits until [`LogLines::count`] reaches `at_least`.
    ///
    /// # Panics
    ///
    /// When it has not within `within`, naming the line and the count.
    pub async fn wait_for(&self, message: &str, with: &str, at_least: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.count(message, with) < at_least {
            assert!(
                Instant::now() < deadline,
                "`{message}` ({with}) seen {} times, not {at_least}, within {within:?}",
                self.count(message, with)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Prints the events `spec` selects (`tracing_subscriber` [`Targets`]
/// syntax, e.g. `warn,courier_nats=debug`) with the time, through
/// `writer`, as the process's global subscriber. Returns `Ok(false)` when
/// the process has a global subscriber already (the test binary's own),
/// which is left alone.
pub(crate) fn print_to<W>(
    spec: &str,
    writer: W,
) -> Result<bool, tracing_subscriber::filter::ParseError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let targets = spec.parse::<Targets>()?;
    if tracing::dispatcher::has_been_set() {
        return Ok(false);
    }
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    let subscriber = tracing_subscriber::registry().with(layer).with(targets);
    Ok(tracing::subscriber::set_global_default(subscriber).is_ok())
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for LogLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line.0);
    }
}
