//! Where the offsets settled above a committed position are kept when the
//! broker does not keep commit metadata.
//!
//! Kafka stores a commit's metadata string next to the committed offset,
//! and courier writes the offsets settled above the position there
//! ([`Watermark::metadata`](crate::watermark::Watermark::metadata)). Some
//! Kafka-protocol brokers (tansu 0.6) accept the metadata but return it
//! empty. So when a partition is given up with offsets settled above its
//! position, the same text is also written as a record to the partition of
//! the same number of a companion topic, `<topic>.courier-settled`, and
//! that record's offset is committed for the group in the same commit
//! request as the position. The partition's next owner reads the metadata
//! from the commit, or, when it is empty, the companion record the group's
//! commit points at. The text names the position it belongs to, so a stale
//! record is never applied to another position.
//!
//! Whatever fails here (no companion topic, a record that cannot be read)
//! only means the settled offsets are delivered again: at least once,
//! never lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::resilience::deadline_after;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Message as _;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::CourierContext;
use crate::client::client_config;
use crate::config::KafkaConfig;
use crate::publisher::Producer;

/// How long a rebalance waits for the companion offsets and records (it
/// runs while the group waits for this member).
pub(crate) const WAIT: Duration = Duration::from_secs(3);

/// The companion topic of `topic`.
pub(crate) fn companion(topic: &str) -> String {
    format!("{topic}.courier-settled")
}

/// Writes `metadata` for each partition to the companion topic of `topic`
/// and returns the offsets to commit for it (one past each record).
/// Partitions whose record could not be written are left out.
pub(crate) async fn store(
    producer: &Arc<Producer>,
    config: &KafkaConfig,
    topic: &str,
    entries: Vec<(i32, String)>,
) -> Vec<(i32, i64)> {
    if entries.is_empty() || !config.create_topics {
        return Vec::new();
    }
    let side = companion(topic);
    let needed = entries.iter().map(|(p, _)| p + 1).max().unwrap_or(1);
    let partitions = match producer.topics.ensure_partitions(&side, needed).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(%side, error = %e, "cannot create the settled-offsets topic");
            return Vec::new();
        }
    };
    let client = producer.client();
    let sends = entries
        .iter()
        .filter(|(p, _)| *p < partitions)
        .map(|(partition, metadata)| {
            let client = client.clone();
            let side = side.clone();
            let timeout = config.publish_timeout;
            async move {
                let record: FutureRecord<'_, [u8], str> = FutureRecord::to(&side)
                    .partition(*partition)
                    .payload(metadata.as_str());
                match client.send(record, timeout).await {
                    Ok(delivery) => Some((*partition, delivery.offset + 1)),
                    Err((e, _)) => {
                        tracing::warn!(%side, partition, error = %e, "cannot store settled offsets");
                        None
                    }
                }
            }
        });
    futures::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The companion offsets `group_consumer`'s group committed for
/// `partitions` of `topic` (one past the record to read), by partition.
pub(crate) fn committed<C: ConsumerContext>(
    group_consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> HashMap<i32, i64> {
    let side = companion(topic);
    let mut list = TopicPartitionList::new();
    for &p in partitions {
        list.add_partition(&side, p);
    }
    let Ok(committed) = group_consumer.committed_offsets(list, timeout) else {
        return HashMap::new();
    };
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(next) if next > 0 => Some((e.partition(), next - 1)),
            _ => None,
        })
        .collect()
}

/// Reads the companion records at `offsets` (by partition). Blocking.
pub(crate) fn load(
    config: &KafkaConfig,
    topic: &str,
    offsets: &HashMap<i32, i64>,
) -> HashMap<i32, String> {
    let mut found = HashMap::new();
    if offsets.is_empty() {
        return found;
    }
    let side = companion(topic);
    let reader: BaseConsumer<CourierContext> = match client_config(
        config,
        [
            ("group.id", "courier-settled-reader".to_owned()),
            ("enable.auto.commit", "false".to_owned()),
            ("enable.auto.offset.store", "false".to_owned()),
        ],
    )
    .create_with_context(CourierContext::default())
    {
        Ok(reader) => reader,
        Err(e) => {
            tracing::warn!(%side, error = %e, "cannot read settled offsets");
            return found;
        }
    };
    let mut list = TopicPartitionList::new();
    for (&p, &offset) in offsets {
        let _ = list.add_partition_offset(&side, p, Offset::Offset(offset));
    }
    if let Err(e) = reader.assign(&list) {
        tracing::warn!(%side, error = %e, "cannot read settled offsets");
        return found;
    }
    let deadline = deadline_after(Instant::now(), WAIT.min(config.connect_timeout));
    while found.len() < offsets.len() && Instant::now() < deadline {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(record)) if offsets.get(&record.partition()) == Some(&record.offset()) => {
                if let Some(Ok(text)) = record.payload_view::<str>() {
                    found.insert(record.partition(), text.to_owned());
                }
            }
            _ => {}
        }
    }
    found
}
