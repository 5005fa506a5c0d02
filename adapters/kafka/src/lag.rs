//! Consumer lag and connection health on Kafka.

use std::time::Duration;

use courier_core::telemetry::{Health, Lag, PartitionLag};
use courier_core::{Error, Result};
use parking_lot::Mutex;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::blocking;
use crate::config::KafkaConfig;
use crate::error::op_error;
use crate::group::group_client;

/// Per partition of `topic`: the high watermark minus `group`'s committed
/// offset (the low watermark where it committed none), summed. Exact for
/// what the group committed; acks are committed within the commit
/// interval, so the lag trails them by that much. Each request to the
/// cluster waits at most `timeout`.
pub(crate) async fn lag(
    config: &KafkaConfig,
    topic: &str,
    group: &str,
    timeout: Duration,
) -> Result<Lag> {
    let client = group_client(config, group).map_err(|e| op_error("lag", e))?;
    let name = topic.to_owned();
    let topic = topic.to_owned();
    let partitions = blocking(move || {
        let metadata = client.fetch_metadata(Some(&topic), timeout)?;
        let ids: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut wanted = TopicPartitionList::new();
        for id in &ids {
            wanted.add_partition(&topic, *id);
        }
        let committed = client.committed_offsets(wanted, timeout)?;
        let mut partitions = Vec::with_capacity(ids.len());
        for id in ids {
            let (low, high) = client.fetch_watermarks(&topic, id, timeout)?;
            let committed = committed
                .find_partition(&topic, id)
                .and_then(|p| match p.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
            partitions.push(PartitionLag::new(id, low, high, committed));
        }
        Ok(partitions)
    })
    .await
    .map_err(|e| op_error("lag", e))?;
    if partitions.is_empty() {
        return Err(Error::TopicNotFound(name));
    }
    Ok(Lag::of_partitions(partitions))
}

/// What the last operation that reached the cluster said about the
/// connection: rdkafka reports brokers going down to a client's context but
/// never their coming back, so health follows the outcomes of publishes and
/// lag reads instead.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    lost: Mutex<Option<String>>,
}

impl Liveness {
    /// Records an operation's outcome: a failure that says the cluster is
    /// unreachable makes the connection unusable until the next success.
    pub(crate) fn record<T>(&self, outcome: &Result<T>) {
        match outcome {
            Ok(_) => *self.lost.lock() = None,
            Err(error @ (Error::Timeout { .. } | Error::Connect { .. })) => {
                *self.lost.lock() = Some(error.to_string());
            }
            Err(error)
                if error.broker_kind() == Some(courier_core::BrokerErrorKind::Unavailable) =>
            {
                *self.lost.lock() = Some(error.to_string());
            }
            Err(_) => {}
        }
    }

    /// Usable unless closed or the last operation found the cluster
    /// unreachable.
    pub(crate) fn health(&self, closed: bool) -> Health {
        if closed {
            return Health::Unusable("closed".into());
        }
        match &*self.lost.lock() {
            Some(why) => Health::Unusable(format!("the last operation failed: {why}")),
            None => Health::Usable,
        }
    }
}
