//! Confirmed publishing with rdkafka's idempotent producer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use courier_core::adapter::wire::{self, Native};
use courier_core::{Error, Message, Result};
use parking_lot::RwLock;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::client::CourierContext;
use crate::client::{blocking, client_config, millis};
use crate::config::KafkaConfig;
use crate::error::{BROKER, publish_error};
use crate::topics::Topics;

/// How long `close` waits for queued records to be confirmed.
const FLUSH_TIMEOUT_CAP: std::time::Duration = std::time::Duration::from_secs(30);

/// The producer of one connection. rdkafka's producer is replaced by a new
/// one if it fails fatally (the idempotent producer does when the broker
/// loses track of its sequence numbers, after a broker restart, say).
pub(crate) struct Producer {
    config: Arc<KafkaConfig>,
    producer: RwLock<Arc<FutureProducer<CourierContext>>>,
    pub(crate) topics: Arc<Topics>,
    /// The largest record rdkafka sends (`message.max.bytes`).
    record_limit: usize,
    closed: AtomicBool,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("bootstrap_servers", &self.config.bootstrap_servers)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// A record ready to send, owning its parts.
pub(crate) struct Record<'a> {
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) payload: &'a [u8],
    pub(crate) headers: OwnedHeaders,
    pub(crate) timestamp: Option<i64>,
}

impl Producer {
    pub(crate) fn new(config: Arc<KafkaConfig>, topics: Arc<Topics>) -> Result<Self, KafkaError> {
        let producer = create(&config)?;
        let record_limit = config
            .rdkafka
            .iter()
            .rev()
            .find(|(name, _)| name == "message.max.bytes")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or_else(|| config.max_record());
        Ok(Producer {
            config,
            producer: RwLock::new(Arc::new(producer)),
            topics,
            record_limit,
            closed: AtomicBool::new(false),
        })
    }

    /// The rdkafka producer in use.
    pub(crate) fn client(&self) -> Arc<FutureProducer<CourierContext>> {
        self.producer.read().clone()
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("kafka publisher"));
        }
        Ok(())
    }

    /// Publishes `messages` to `topic`: all are handed to rdkafka first, then
    /// every delivery report is awaited. Returns the first failure.
    pub(crate) async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        self.check_open()?;
        courier_core::name::validate_topic(topic)?;
        courier_core::adapter::check_payloads(&messages, self.config.max_payload)?;
        if messages.is_empty() {
            return Ok(());
        }
        self.topics.ensure(topic).await?;
        let records = messages.iter().map(|m| Record {
            key: m.key().map(str::as_bytes),
            payload: m.payload(),
            headers: headers_of(m),
            timestamp: Some(m.timestamp_millis() as i64),
        });
        self.send_all(topic, records).await
    }

    /// Sends records and awaits all their delivery reports.
    pub(crate) async fn send_all<'a>(
        &self,
        topic: &str,
        records: impl Iterator<Item = Record<'a>>,
    ) -> Result<()> {
        let producer = self.client();
        let mut pending: VecDeque<(DeliveryFuture, usize)> = VecDeque::new();
        let mut first_error = None;
        for record in records {
            let size = record.payload.len();
            let mut kafka_record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(record.payload)
                .headers(record.headers);
            if let Some(key) = record.key {
                kafka_record = kafka_record.key(key);
            }
            if let Some(timestamp) = record.timestamp {
                kafka_record = kafka_record.timestamp(timestamp);
            }
            loop {
                match producer.send_result(kafka_record) {
                    Ok(delivery) => {
                        pending.push_back((delivery, size));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // rdkafka's queue is full: wait for the oldest report.
                        kafka_record = back;
                        match pending.pop_front() {
                            Some((delivery, size)) => {
                                let outcome = self.report(topic, delivery, size).await;
                                first_error = first_error.or(outcome.err());
                            }
                            None => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                        }
                    }
                    Err((err, _)) => {
                        first_error = first_error.or(Some(self.failure(err, topic, size)));
                        break;
                    }
                }
            }
        }
        for (delivery, size) in pending {
            let outcome = self.report(topic, delivery, size).await;
            first_error = first_error.or(outcome.err());
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Awaits one delivery report.
    async fn report(&self, topic: &str, delivery: DeliveryFuture, size: usize) -> Result<()> {
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((err, _))) => Err(self.failure(err, topic, size)),
            Err(_canceled) => Err(Error::broker(
                BROKER,
                "publish",
                courier_core::BrokerErrorKind::Unavailable,
                "the producer was shut down before the broker confirmed",
            )),
        }
    }

    /// Types a failed publish; replaces a fatally failed producer.
    fn failure(&self, err: KafkaError, topic: &str, size: usize) -> Error {
        if matches!(
            err.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
        ) {
            self.topics.forget(topic);
        }
        // A broker that lost (or refuses) this producer's id and sequence
        // after a restart fails every further record without making the
        // producer fatal (tansu answers with an unknown error): start a new
        // producer id as after a fatal error.
        let stale = matches!(
            err.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Unknown
                    | RDKafkaErrorCode::OutOfOrderSequenceNumber
                    | RDKafkaErrorCode::UnknownProducerId
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::InvalidProducerIdMapping
            )
        );
        self.renew(stale);
        publish_error(
            err,
            topic,
            size,
            self.record_limit,
            self.config.publish_timeout,
        )
    }

    /// A fatally failed idempotent producer refuses everything from then on;
    /// a new one starts a new producer id and sequence. With `stale`, the
    /// broker refused a record for a reason a new producer id cures.
    fn renew(&self, stale: bool) {
        let current = self.client();
        let (code, reason) = match current.client().fatal_error() {
            Some(fatal) => fatal,
            None if stale => (
                RDKafkaErrorCode::Unknown,
                "the broker refuses the producer's records".to_owned(),
            ),
            None => return,
        };
        let mut slot = self.producer.write();
        if !Arc::ptr_eq(&slot, &current) {
            return; // someone renewed it already
        }
        tracing::warn!(%code, reason, "kafka producer failed fatally; starting a new one");
        match create(&self.config) {
            Ok(fresh) => *slot = Arc::new(fresh),
            Err(e) => tracing::error!(error = %e, "cannot create a new kafka producer"),
        }
    }

    /// Waits for queued records, then refuses further publishes. Idempotent.
    pub(crate) async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let producer = self.client();
        let timeout = self.config.publish_timeout.min(FLUSH_TIMEOUT_CAP);
        blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .map_err(|e| crate::error::op_error("flush", e))
    }
}

/// The record headers of a message: courier's fields and the user's. The
/// key travels as the record key.
pub(crate) fn headers_of(message: &Message) -> OwnedHeaders {
    let mut headers = Some(OwnedHeaders::new_with_capacity(message.headers().len() + 3));
    wire::encode(message, Native { key: true }, |name, value| {
        headers = headers.take().map(|h| {
            h.insert(Header {
                key: name,
                value: Some(value),
            })
        });
    });
    headers.unwrap_or_default()
}

fn create(config: &KafkaConfig) -> Result<FutureProducer<CourierContext>, KafkaError> {
    client_config(
        config,
        [
            ("enable.idempotence", "true".to_owned()),
            ("acks", "all".to_owned()),
            (
                "message.timeout.ms",
                millis(config.publish_timeout).to_string(),
            ),
            ("message.max.bytes", config.max_record().to_string()),
            // The Java client's partitioner: a key lands on the same
            // partition whichever client published it.
            ("partitioner", "murmur2_random".to_owned()),
            ("linger.ms", "2".to_owned()),
        ],
    )
    .create_with_context(CourierContext::default())
}
