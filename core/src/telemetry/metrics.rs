//! Metric names, units and labels, after the OpenTelemetry messaging
//! conventions where they name one (`messaging.*`) and courier's own
//! (`courier.*`) where they do not.
//!
//! Everything is recorded through the [`metrics`] facade: install
//! any recorder (a Prometheus exporter, an OpenTelemetry bridge, a test
//! recorder) and the numbers appear; without one they cost next to nothing.
//! Consumers register their instruments when they are built, so install the
//! recorder before building consumers. [`describe`] registers descriptions
//! and units with the installed recorder.
//!
//! | name | kind | unit | labels |
//! |---|---|---|---|
//! | [`SENT_MESSAGES`] | counter | messages | system, destination, operation name, `error.type` on failure |
//! | [`OPERATION_DURATION`] | histogram | seconds | as above (one sample per publish call) |
//! | [`CONSUMED_MESSAGES`] | counter | messages | system, destination, consumer group, operation name |
//! | [`PROCESS_DURATION`] | histogram | seconds | system, destination, group, `error.type` on a failed attempt (one sample per handler attempt) |
//! | [`IN_FLIGHT`] | gauge | messages | system, destination, group |
//! | [`RETRIES`] | counter | retries | system, destination, group |
//! | [`DEAD_LETTERED`] | counter | messages | system, destination, group |
//! | [`MESSAGE_AGE`] | histogram | seconds | system, destination, group |
//! | [`LAG`] | gauge | messages | system, destination, group |

use std::time::Duration;

use std::collections::HashMap;
use std::sync::{OnceLock, PoisonError, RwLock};

use ::metrics::{Counter, Histogram, Unit, describe_counter, describe_gauge, describe_histogram};

use crate::error::Result;

/// Messages a producer sent (counted once the broker confirmed them, or
/// with `error.type` when the publish failed).
pub const SENT_MESSAGES: &str = "messaging.client.sent.messages";
/// Messages a consumer received (counted when the runtime starts
/// processing a delivery; a redelivered message counts again).
pub const CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
/// How long a publish took, from the call to the broker's confirmation.
pub const OPERATION_DURATION: &str = "messaging.client.operation.duration";
/// How long one handler attempt took.
pub const PROCESS_DURATION: &str = "messaging.process.duration";
/// Deliveries the consumer runtime is processing: started and not yet
/// settled (running, waiting for a retry or a slot, settling).
pub const IN_FLIGHT: &str = "courier.consumer.in_flight";
/// Retries scheduled after a failed attempt.
pub const RETRIES: &str = "courier.consumer.retries";
/// Messages the consumer runtime dead-lettered.
pub const DEAD_LETTERED: &str = "courier.consumer.dead_lettered";
/// Age of a message when its processing starts: now minus the message's
/// timestamp (clock skew between hosts shows up here).
pub const MESSAGE_AGE: &str = "courier.consumer.message_age";
/// A consumer group's lag (messages not yet settled), refreshed in the
/// background; see [`ConsumerBuilder::report_lag`](crate::runtime::ConsumerBuilder::report_lag).
pub const LAG: &str = "courier.consumer.lag";

/// Label: the messaging system (`memory`, `rabbitmq`, `kafka`, `nats`).
pub const SYSTEM: &str = "messaging.system";
/// Label: the topic.
pub const DESTINATION: &str = "messaging.destination.name";
/// Label: the consumer group.
pub const CONSUMER_GROUP: &str = "messaging.consumer.group.name";
/// Label: the operation (`publish`, `process`).
pub const OPERATION_NAME: &str = "messaging.operation.name";
/// Label: the class of error when the operation failed.
pub const ERROR_TYPE: &str = "error.type";

/// Registers the description and unit of every metric above with the
/// installed recorder.
pub fn describe() {
    describe_counter!(SENT_MESSAGES, Unit::Count, "Messages sent to a broker");
    describe_counter!(
        CONSUMED_MESSAGES,
        Unit::Count,
        "Messages received from a broker"
    );
    describe_histogram!(
        OPERATION_DURATION,
        Unit::Seconds,
        "Duration of a publish, until the broker confirmed it"
    );
    describe_histogram!(
        PROCESS_DURATION,
        Unit::Seconds,
        "Duration of one handler attempt"
    );
    describe_gauge!(IN_FLIGHT, Unit::Count, "Deliveries being processed");
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Retries after a failed handler attempt"
    );
    describe_counter!(
        DEAD_LETTERED,
        Unit::Count,
        "Messages sent to a dead-letter topic"
    );
    describe_histogram!(
        MESSAGE_AGE,
        Unit::Seconds,
        "Age of a message when its processing starts"
    );
    describe_gauge!(
        LAG,
        Unit::Count,
        "Messages of a consumer group not yet settled"
    );
}

/// Records one publish call of `count` messages.
pub(crate) fn record_publish(
    system: &'static str,
    topic: &str,
    count: usize,
    took: Duration,
    outcome: &Result<()>,
) {
    match outcome {
        Ok(()) => with_publish_instruments(system, topic, |sent, duration| {
            sent.increment(count as u64);
            duration.record(took);
        }),
        Err(error) => {
            let destination = topic.to_owned();
            let error_type = error_type(error);
            ::metrics::counter!(SENT_MESSAGES, SYSTEM => system, DESTINATION => destination.clone(), OPERATION_NAME => "publish", ERROR_TYPE => error_type)
                .increment(count as u64);
            ::metrics::histogram!(OPERATION_DURATION, SYSTEM => system, DESTINATION => destination, OPERATION_NAME => "publish", ERROR_TYPE => error_type)
                .record(took);
        }
    }
}

/// A low-cardinality class of a courier error, for `error.type`.
pub(crate) fn error_type(error: &crate::Error) -> &'static str {
    use crate::Error;
    match error {
        Error::InvalidName(_) => "invalid_name",
        Error::Header(_) => "header",
        Error::PayloadTooLarge { .. } => "payload_too_large",
        Error::Encode { .. } => "encode",
        Error::Decode { .. } => "decode",
        Error::Timeout { .. } => "timeout",
        Error::Closed(_) => "closed",
        Error::TopicNotFound(_) => "topic_not_found",
        Error::Unsupported { .. } => "unsupported",
        Error::Connect { .. } => "connect",
        Error::Broker { .. } => "broker",
        _ => "_OTHER",
    }
}

/// The success instruments of publishes per system and topic, registered
/// once: building a metric key per publish (labels, strings) would cost
/// more than the in-process broker's whole publish.
type PublishInstruments = HashMap<&'static str, HashMap<Box<str>, (Counter, Histogram)>>;

/// Topics beyond this many per system are registered on every publish
/// instead of kept, so a service publishing to endless topic names does
/// not grow the table without bound.
const MAX_CACHED_TOPICS: usize = 4096;

fn with_publish_instruments(
    system: &'static str,
    topic: &str,
    record: impl FnOnce(&Counter, &Histogram),
) {
    static CACHE: OnceLock<RwLock<PublishInstruments>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some((sent, duration)) = cache
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(system)
        .and_then(|topics| topics.get(topic))
    {
        return record(sent, duration);
    }
    let destination = topic.to_owned();
    let sent = ::metrics::counter!(SENT_MESSAGES, SYSTEM => system, DESTINATION => destination.clone(), OPERATION_NAME => "publish");
    let duration = ::metrics::histogram!(OPERATION_DURATION, SYSTEM => system, DESTINATION => destination, OPERATION_NAME => "publish");
    record(&sent, &duration);
    let mut cache = cache.write().unwrap_or_else(PoisonError::into_inner);
    let topics = cache.entry(system).or_default();
    if topics.len() < MAX_CACHED_TOPICS {
        topics.insert(topic.into(), (sent, duration));
    }
}
