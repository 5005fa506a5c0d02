//! What every rdkafka client of the adapter shares: its settings, its
//! context (logging, the last transport error), and how blocking calls run.

use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaConfig;

/// The client context of the producer, the admin client and short-lived
/// consumers: logs through `tracing` and keeps the last broker-connection
/// error, which rdkafka reports only through this callback.
#[derive(Debug, Default)]
pub(crate) struct CourierContext {
    transport: Mutex<Transport>,
}

#[derive(Debug, Default)]
struct Transport {
    /// The last connection-level error and its reason.
    last: Option<(RDKafkaErrorCode, String)>,
    /// Whether rdkafka said every bootstrap server is down.
    all_down: bool,
}

impl CourierContext {
    /// The last connection error seen, and whether all brokers are down.
    pub(crate) fn transport_error(&self) -> (Option<(RDKafkaErrorCode, String)>, bool) {
        let t = self.transport.lock();
        (t.last.clone(), t.all_down)
    }

    fn record(&self, error: &KafkaError, reason: &str) {
        let Some(code) = error.rdkafka_error_code() else {
            return;
        };
        let mut t = self.transport.lock();
        if code == RDKafkaErrorCode::AllBrokersDown {
            t.all_down = true;
        } else {
            t.last = Some((code, reason.to_owned()));
        }
    }
}

impl ClientContext for CourierContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.record(&error, reason);
        tracing::debug!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for CourierContext {}

/// rdkafka's log level: as verbose as `tracing` currently wants.
pub(crate) fn log_level() -> RDKafkaLogLevel {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF | LevelFilter::ERROR => RDKafkaLogLevel::Error,
        LevelFilter::WARN => RDKafkaLogLevel::Warning,
        LevelFilter::INFO => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    }
}

/// Forwards rdkafka's log lines to `tracing`.
pub(crate) fn log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "rdkafka", fac, "{message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "rdkafka", fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "rdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "rdkafka", fac, "{message}"),
    }
}

/// Runs a blocking rdkafka call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> std::result::Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

/// Settings every client shares, then the client's own `settings`, then
/// [`KafkaConfig::rdkafka`].
pub(crate) fn client_config<'a>(
    config: &KafkaConfig,
    settings: impl IntoIterator<Item = (&'a str, String)>,
) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", &config.client_id)
        .set(
            "socket.connection.setup.timeout.ms",
            millis(config.connect_timeout).to_string(),
        );
    for (name, value) in settings {
        client.set(name, value);
    }
    client.set_log_level(log_level());
    for (name, value) in &config.rdkafka {
        client.set(name, value);
    }
    client
}

/// A duration in whole milliseconds, at least 1.
pub(crate) fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}
