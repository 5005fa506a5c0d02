//! Consumer groups: where a newly provisioned group starts.

use std::time::Duration;

use courier_core::StartPosition;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{CourierContext, client_config};
use crate::config::KafkaConfig;

/// Makes a group that has no committed offset for some partitions of the
/// topic start where `start` says: commits the partition's end
/// ([`StartPosition::Latest`]) or beginning ([`StartPosition::Earliest`]).
/// From then on the group keeps every message published after this call,
/// even before anyone subscribes. Partitions with a committed offset are
/// left alone, so provisioning is idempotent.
///
/// Blocking: call it off the async threads.
pub(crate) fn pin_group_start<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: i32,
    start: StartPosition,
    timeout: Duration,
) -> std::result::Result<(), KafkaError> {
    let mut all = TopicPartitionList::new();
    for partition in 0..partitions {
        all.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(all, timeout)?;
    let mut pin = TopicPartitionList::new();
    for element in committed.elements() {
        if matches!(element.offset(), Offset::Offset(_)) {
            continue;
        }
        let partition = element.partition();
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let offset = match start {
            StartPosition::Earliest => low,
            _ => high,
        };
        pin.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    if pin.count() == 0 {
        return Ok(());
    }
    match consumer.commit(&pin, CommitMode::Sync) {
        Ok(()) => Ok(()),
        // The group has active members: it exists already, and they commit.
        Err(KafkaError::ConsumerCommit(
            RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::RebalanceInProgress,
        )) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A short-lived consumer of `group`, for provisioning.
pub(crate) fn group_client(
    config: &KafkaConfig,
    group: &str,
) -> std::result::Result<BaseConsumer<CourierContext>, KafkaError> {
    client_config(
        config,
        [
            ("group.id", group.to_owned()),
            ("enable.auto.commit", "false".to_owned()),
        ],
    )
    .create_with_context(CourierContext::default())
}
