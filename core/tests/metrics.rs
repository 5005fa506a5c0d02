//! The consumer runtime's and publish's metrics, read from a test recorder
//! after a run with retries and one dead letter on the in-memory broker.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use courier_core::runtime::{self, Consumer, HandlerError, RetryPolicy};
use courier_core::telemetry::metrics as names;
use courier_core::{Message, Subscription};
use courier_memory::MemoryBroker;
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// What the recorder holds for one metric name: counters and gauges by
/// their labels, histograms by their labels with their sample count.
#[derive(Debug, Default)]
struct Seen {
    values: HashMap<(String, Vec<(String, String)>), f64>,
}

impl Seen {
    fn read() -> Seen {
        let mut seen = Seen::default();
        for (key, _, _, value) in SNAPSHOTTER.get().unwrap().snapshot().into_vec() {
            let (name, labels) = parts(&key);
            let value = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(samples) => samples.len() as f64,
            };
            seen.values.insert((name, labels), value);
        }
        seen
    }

    /// The value (a histogram's sample count) of `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        self.values.get(&(name.to_owned(), labels)).copied()
    }
}

fn parts(key: &CompositeKey) -> (String, Vec<(String, String)>) {
    let mut labels: Vec<(String, String)> = key
        .key()
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    labels.sort();
    (key.key().name().to_owned(), labels)
}

static SNAPSHOTTER: std::sync::OnceLock<metrics_util::debugging::Snapshotter> =
    std::sync::OnceLock::new();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_retries_and_a_dead_letter_is_counted_exactly() {
    let recorder = DebuggingRecorder::new();
    SNAPSHOTTER.set(recorder.snapshotter()).unwrap();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let broker = MemoryBroker::new().into_broker();
    let mut dead_letters = broker
        .subscribe(Subscription::new("orders.dlq", "ops"))
        .await
        .unwrap();
    // "flaky" fails once, "poison" always; three more succeed at once.
    let flaky_failures = Arc::new(AtomicU32::new(0));
    let consumer = Consumer::builder(
        &broker,
        Subscription::new("orders", "billing"),
        runtime::raw({
            let flaky_failures = flaky_failures.clone();
            move |message: Message| {
                let flaky_failures = flaky_failures.clone();
                async move {
                    match message.payload().as_ref() {
                        b"poison" => Err(HandlerError::transient(std::io::Error::other("poison"))),
                        b"flaky" if flaky_failures.fetch_add(1, Ordering::SeqCst) == 0 => {
                            Err(HandlerError::transient(std::io::Error::other("flaky")))
                        }
                        _ => Ok(()),
                    }
                }
            }
        }),
    )
    .retry(
        RetryPolicy::exponential()
            .max_attempts(3)
            .min_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(5)),
    )
    .start()
    .await
    .unwrap();

    for payload in ["ok-1", "flaky", "poison", "ok-2", "ok-3"] {
        broker
            .publish("orders", Message::new(payload))
            .await
            .unwrap();
    }
    let dead = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut dead_letters),
    )
    .await
    .expect("the poison message is dead-lettered")
    .unwrap()
    .unwrap();
    assert_eq!(dead.message().payload().as_ref(), b"poison");
    dead.ack().await.unwrap();
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!((stats.handled, stats.dead_lettered), (4, 1));

    let seen = Seen::read();
    let consumer_labels = [
        (names::SYSTEM, "memory"),
        (names::DESTINATION, "orders"),
        (names::CONSUMER_GROUP, "billing"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut labels = consumer_labels.to_vec();
        labels.extend_from_slice(extra);
        labels
    };
    let publish = [
        (names::SYSTEM, "memory"),
        (names::DESTINATION, "orders"),
        (names::OPERATION_NAME, "publish"),
    ];
    assert_eq!(seen.get(names::SENT_MESSAGES, &publish), Some(5.0));
    assert_eq!(seen.get(names::OPERATION_DURATION, &publish), Some(5.0));
    assert_eq!(
        seen.get(
            names::CONSUMED_MESSAGES,
            &with(&[(names::OPERATION_NAME, "process")])
        ),
        Some(5.0)
    );
    // Attempts: ok-1, ok-2, ok-3 once; flaky twice (one failure); poison
    // three times (all failures).
    assert_eq!(seen.get(names::PROCESS_DURATION, &with(&[])), Some(4.0));
    assert_eq!(
        seen.get(
            names::PROCESS_DURATION,
            &with(&[(names::ERROR_TYPE, "handler_failed")])
        ),
        Some(4.0)
    );
    assert_eq!(seen.get(names::RETRIES, &with(&[])), Some(3.0));
    assert_eq!(seen.get(names::DEAD_LETTERED, &with(&[])), Some(1.0));
    assert_eq!(seen.get(names::IN_FLIGHT, &with(&[])), Some(0.0));
    assert_eq!(seen.get(names::MESSAGE_AGE, &with(&[])), Some(5.0));
    // The dead-letter copy is not a publish of the application's.
    let dlq = [
        (names::SYSTEM, "memory"),
        (names::DESTINATION, "orders.dlq"),
        (names::OPERATION_NAME, "publish"),
    ];
    assert_eq!(seen.get(names::SENT_MESSAGES, &dlq), None);
}
