//! Settling Kafka deliveries against the partition's watermark.

use std::sync::Arc;

use courier_core::adapter::Acknowledger;
use courier_core::{DeadLetter, Delivery, Error, Message, Nack, Result, async_trait};
use tokio::runtime::Handle;

use crate::error::{BROKER, PartitionRevoked};
use crate::flow::{Flow, Pending};
use crate::partition::{Partition, Revoked};

/// Settles one delivery. An ack marks its offset settled (committed once
/// every earlier offset of the partition is settled too); a nack or a
/// dropped delivery gives the record back to this subscription, to be
/// delivered again before new records.
#[derive(Debug)]
pub(crate) struct KafkaAcker {
    pub(crate) flow: Arc<Flow>,
    pub(crate) partition: Arc<Partition>,
    pub(crate) offset: i64,
    pub(crate) deliveries: u32,
}

impl KafkaAcker {
    fn settle(&self) -> Result<()> {
        let outcome = self.partition.settle(self.offset);
        self.flow.release();
        outcome.map_err(|Revoked| self.revoked("ack"))
    }

    fn revoked(&self, operation: &'static str) -> Error {
        Error::broker(
            BROKER,
            operation,
            courier_core::BrokerErrorKind::Conflict,
            PartitionRevoked {
                topic: self.partition.topic.to_string(),
                partition: self.partition.id,
            },
        )
    }

    /// Gives the record back: delivered again next while the partition is
    /// owned, otherwise left unsettled for its next owner.
    fn requeue(&self, message: &Message) {
        if self.partition.give_back() {
            self.flow.redeliver_front(self.pending(message));
        }
        self.flow.release();
    }

    /// Publishes the dead-letter copy; the record stays unsettled.
    async fn publish_copy(&self, message: &Message, dead_letter: &DeadLetter) -> Result<()> {
        let (topic, copy) = dead_letter.to_message(message, &self.flow.topic, &self.flow.group)?;
        self.flow.producer.publish(&topic, vec![copy]).await
    }

    fn pending(&self, message: &Message) -> Pending {
        Pending {
            partition: self.partition.clone(),
            offset: self.offset,
            message: message.clone(),
            deliveries: self.deliveries,
        }
    }
}

#[async_trait]
impl Acknowledger for KafkaAcker {
    async fn ack(self: Box<Self>, _message: &Message) -> Result<()> {
        self.settle()
    }

    /// An ack only marks the offset settled: done here, unless the
    /// partition was revoked (then `ack` reports it).
    fn ack_at_once(&self, _message: &Message) -> bool {
        let settled = self.partition.settle_if_owned(self.offset);
        if settled {
            self.flow.release();
        }
        settled
    }

    async fn nack(self: Box<Self>, message: &Message, nack: Nack) -> Result<()> {
        match nack {
            Nack::RequeueAfter(delay) if !delay.is_zero() => {
                let again = self.partition.give_back();
                self.flow.release();
                if again {
                    let flow = self.flow.clone();
                    let pending = self.pending(message);
                    let redeliver = async move {
                        tokio::time::sleep(delay).await;
                        if pending.partition.is_active() {
                            flow.redeliver_front(pending);
                        }
                    };
                    let tasks = &self.flow.tasks;
                    tasks.spawn_until_close("delayed redelivery", redeliver, &Handle::current());
                }
                Ok(())
            }
            Nack::DeadLetter(dead_letter) => match self.publish_copy(message, &dead_letter).await {
                Ok(()) => self
                    .settle()
                    .map_err(|_| self.revoked("dead-letter (the copy was published)")),
                Err(e) => {
                    self.requeue(message);
                    Err(e)
                }
            },
            _ => {
                self.requeue(message);
                Ok(())
            }
        }
    }

    fn abandon(self: Box<Self>, message: &Message) {
        self.requeue(message);
    }

    async fn publish_dead_letter(
        &self,
        message: &Message,
        dead_letter: &DeadLetter,
    ) -> Option<Result<()>> {
        if !self.partition.is_active() {
            // Revoked: the record belongs to its next owner now.
            return None;
        }
        Some(self.publish_copy(message, dead_letter).await)
    }

    async fn settle_dead_lettered(self: Box<Self>, _message: &Message) -> Result<()> {
        self.settle()
            .map_err(|_| self.revoked("dead-letter (the copy was published)"))
    }

    fn partition(&self) -> Option<i32> {
        Some(self.partition.id)
    }

    fn offset(&self) -> Option<i64> {
        Some(self.offset)
    }
}

/// Hands `pending` out as a delivery of `flow`.
pub(crate) fn deliver(flow: &Arc<Flow>, mut pending: Pending) -> Delivery {
    pending.deliveries += 1;
    flow.add_in_flight();
    let acker = KafkaAcker {
        flow: flow.clone(),
        partition: pending.partition,
        offset: pending.offset,
        deliveries: pending.deliveries,
    };
    courier_core::adapter::delivery(
        pending.message,
        flow.topic.clone(),
        Box::new(acker),
        Some(pending.deliveries),
    )
}
