//! Consumer lag: how many messages a group has not yet settled.

use std::time::Duration;

/// Default bound of [`lag_within`](super::lag_within) when none is given
/// ([`Broker::lag`](crate::Broker::lag)).
pub const DEFAULT_LAG_TIMEOUT: Duration = Duration::from_secs(5);

/// A consumer group's backlog on one topic, as the broker counts it.
///
/// | adapter | `total` | exact? |
/// |---|---|---|
/// | memory | messages in the group's queue + delivered and not yet settled | exact |
/// | Kafka | per partition: high watermark − committed offset (− low watermark when nothing is committed), summed | exact for committed offsets; an ack is committed within about 100 ms, so `total` trails acks by that much |
/// | NATS JetStream | the durable consumer's `num_pending` + `num_ack_pending` | exact |
/// | RabbitMQ | the queue's ready messages (passive `queue.declare`) | ready only: messages delivered and not yet acked are not counted (`unacked` is `None`); exact once no consumer holds any |
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Lag {
    /// Messages of the group not yet settled, as far as the broker counts:
    /// `ready` plus `unacked` where both are known.
    pub total: u64,
    /// Messages waiting to be delivered to the group, where the broker
    /// tells them apart.
    pub ready: Option<u64>,
    /// Messages delivered to the group and not yet settled; `None` where
    /// the broker does not say (RabbitMQ), so `total` leaves them out.
    pub unacked: Option<u64>,
    /// Per partition, on brokers with partitions (Kafka); empty elsewhere.
    pub partitions: Vec<PartitionLag>,
}

impl Lag {
    /// A lag of `ready` waiting and `unacked` delivered messages.
    pub fn new(ready: u64, unacked: Option<u64>) -> Self {
        Lag {
            total: ready + unacked.unwrap_or(0),
            ready: Some(ready),
            unacked,
            partitions: Vec::new(),
        }
    }

    /// The lag of partitions: their sum, with `ready` and `unacked` unknown
    /// (a committed offset does not tell them apart).
    pub fn of_partitions(partitions: Vec<PartitionLag>) -> Self {
        Lag {
            total: partitions.iter().map(|p| p.lag).sum(),
            ready: None,
            unacked: None,
            partitions,
        }
    }

    /// Whether `total` counts delivered-but-unsettled messages too.
    pub fn counts_unacked(&self) -> bool {
        self.unacked.is_some() || !self.partitions.is_empty()
    }
}

/// One partition's lag (Kafka).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionLag {
    /// The partition.
    pub partition: i32,
    /// The offset the next message will get.
    pub high_watermark: i64,
    /// The group's committed offset, if it committed one.
    pub committed: Option<i64>,
    /// `high_watermark` − the committed offset (or the low watermark).
    pub lag: u64,
}

impl PartitionLag {
    /// A partition's lag from its watermarks and the group's committed
    /// offset.
    pub fn new(
        partition: i32,
        low_watermark: i64,
        high_watermark: i64,
        committed: Option<i64>,
    ) -> Self {
        let from = committed.unwrap_or(low_watermark).max(low_watermark);
        PartitionLag {
            partition,
            high_watermark,
            committed,
            lag: u64::try_from(high_watermark - from).unwrap_or(0),
        }
    }
}
