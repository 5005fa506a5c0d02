//! Request/reply: requests are records of the topic, answered by an
//! ordinary consumer group; replies go to a reply topic of the requesting
//! connection, which it reads by assignment (no group, no rebalancing).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use courier_core::request::PendingReplies;
use courier_core::{Error, MessageId, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{OnceCell, oneshot};

use crate::client::CourierContext;
use crate::client::client_config;
use crate::config::KafkaConfig;
use crate::error::op_error;
use crate::publisher::Producer;

/// How long a fetch of the reply topic may wait on the broker for data:
/// short, since a requester is waiting.
const REPLY_FETCH_WAIT: &str = "20";

/// A connection's reply topic and the thread reading it, started on the
/// connection's first request.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    started: OnceCell<Started>,
}

#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) topic: String,
    pub(crate) pending: Arc<PendingReplies>,
    stop: Arc<AtomicBool>,
    /// Completes when the reader thread has ended (and dropped its
    /// consumer); taken by [`Inbox::close`].
    pub(crate) reader_ended: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inbox {
    /// Replies that came after their request had given up.
    pub(crate) fn late_replies(&self) -> u64 {
        self.started
            .get()
            .map_or(0, |started| started.pending.late())
    }

    /// The reply path, once the first request started it.
    pub(crate) fn started(&self) -> Option<&Started> {
        self.started.get()
    }

    /// Stops reading the reply topic; waiting requests see the reply path
    /// closed.
    pub(crate) fn stop(&self) {
        if let Some(started) = self.started.get() {
            started.stop.store(true, Ordering::Release);
            started.pending.close_all();
        }
    }

    pub(crate) async fn get(&self, config: &KafkaConfig, producer: &Producer) -> Result<&Started> {
        self.started
            .get_or_try_init(|| async {
                let id = MessageId::new().to_string().replace('-', "");
                let topic = format!("courier-replies.{id}");
                producer.topics.ensure_partitions(&topic, 1).await?;
                let consumer: BaseConsumer<CourierContext> = client_config(
                    config,
                    [
                        ("group.id", format!("courier-replies.{id}")),
                        ("enable.auto.commit", "false".to_owned()),
                        ("enable.auto.offset.store", "false".to_owned()),
                        // The topic is this connection's own: should the
                        // position ever be lost, everything in it is still
                        // worth reading (late replies are counted).
                        ("auto.offset.reset", "earliest".to_owned()),
                        ("fetch.wait.max.ms", REPLY_FETCH_WAIT.to_owned()),
                    ],
                )
                .create_with_context(CourierContext::default())
                .map_err(|e| op_error("create the reply consumer", e))?;
                // The topic is new and this connection's own: every record
                // in it is a reply to one of its requests.
                let mut assignment = TopicPartitionList::new();
                assignment
                    .add_partition_offset(&topic, 0, Offset::Beginning)
                    .map_err(|e| op_error("assign the reply topic", e))?;
                consumer
                    .assign(&assignment)
                    .map_err(|e| op_error("assign the reply topic", e))?;
                let pending = PendingReplies::new();
                let stop = Arc::new(AtomicBool::new(false));
                let reading = (Arc::downgrade(&pending), stop.clone(), topic.clone());
                let (ended, reader_ended) = oneshot::channel();
                std::thread::Builder::new()
                    .name("courier-kafka-replies".to_owned())
                    .spawn(move || {
                        read_replies(&consumer, &reading.0, &reading.1, &reading.2);
                        drop(consumer);
                        let _ = ended.send(());
                    })
                    .map_err(|e| {
                        Error::broker(
                            crate::error::BROKER,
                            "start the reply reader",
                            courier_core::BrokerErrorKind::Other,
                            e,
                        )
                    })?;
                Ok(Started {
                    topic,
                    pending,
                    stop,
                    reader_ended: std::sync::Mutex::new(Some(reader_ended)),
                })
            })
            .await
    }
}

/// Polls the reply topic until stopped, handing every reply to `pending`.
fn read_replies(
    consumer: &BaseConsumer<CourierContext>,
    pending: &Weak<PendingReplies>,
    stop: &AtomicBool,
    topic: &str,
) {
    while !stop.load(Ordering::Acquire) {
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Some(pending) = pending.upgrade() else {
            return;
        };
        match polled {
            Ok(record) => match crate::consumer::decode(&record, topic) {
                Ok(reply) => {
                    pending.deliver(reply);
                }
                Err(reason) => tracing::warn!(%reason, "undecodable reply dropped"),
            },
            Err(e) => tracing::debug!(error = %e, "reply topic poll"),
        }
    }
}
