//! Topics: existence checks and creation, with their partition counts.

use std::sync::Arc;
use std::time::Duration;

use courier_core::adapter::OncePerKey;
use courier_core::adapter::backoff::Backoff;
use courier_core::error::chain;
use courier_core::{Error, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::client::{CourierContext, blocking};
use crate::config::KafkaConfig;
use crate::error::op_error;

/// Creates and looks up topics; remembers those known to exist.
pub(crate) struct Topics {
    config: Arc<KafkaConfig>,
    admin: AdminClient<CourierContext>,
    /// A consumer without group, for metadata requests (consumers never ask
    /// the broker to auto-create the topics they look up).
    metadata: Arc<BaseConsumer<CourierContext>>,
    /// Topics known to exist, with their partition count: the first use of
    /// a topic looks it up (and creates it), uses racing it wait for that.
    known: OncePerKey<i32, Error>,
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics")
            .field("known", &self.known)
            .finish_non_exhaustive()
    }
}

impl Topics {
    pub(crate) fn new(
        config: Arc<KafkaConfig>,
        admin: AdminClient<CourierContext>,
        metadata: Arc<BaseConsumer<CourierContext>>,
    ) -> Self {
        Topics {
            config,
            admin,
            metadata,
            known: OncePerKey::new(),
        }
    }

    /// The topic's partition count, creating the topic when it is missing
    /// and [`KafkaConfig::create_topics`] allows.
    pub(crate) async fn ensure(&self, topic: &str) -> Result<i32> {
        self.ensure_partitions(topic, self.config.partitions).await
    }

    /// As [`Topics::ensure`], creating a missing topic with `partitions`
    /// partitions.
    pub(crate) async fn ensure_partitions(&self, topic: &str, partitions: i32) -> Result<i32> {
        let look_up = || async move {
            match self.partition_count(topic).await? {
                Some(n) => Ok(n),
                None if !self.config.create_topics => Err(Error::TopicNotFound(topic.to_owned())),
                None => self.create(topic, partitions).await,
            }
        };
        self.known.get_or_run(topic, look_up, shared_error).await
    }

    /// How many topic look-ups (and creations) were started.
    #[cfg(test)]
    pub(crate) fn look_ups(&self) -> u64 {
        self.known.runs()
    }

    /// Whether the topic exists (without creating it).
    pub(crate) async fn exists(&self, topic: &str) -> Result<bool> {
        if self.known.get(topic).is_some() {
            return Ok(true);
        }
        Ok(self.partition_count(topic).await?.is_some())
    }

    /// Forgets what is known about a topic (after the broker said it is
    /// unknown, say).
    pub(crate) fn forget(&self, topic: &str) {
        self.known.forget(topic);
    }

    /// Deletes the topic (a topic already gone counts as deleted) and
    /// forgets it.
    pub(crate) async fn delete(&self, topic: &str) -> Result<()> {
        self.forget(topic);
        let options = AdminOptions::new()
            .request_timeout(Some(self.config.connect_timeout))
            .operation_timeout(Some(self.config.connect_timeout));
        let outcome = self
            .admin
            .delete_topics(&[topic], &options)
            .await
            .map_err(|e| op_error("delete topic", e))?;
        for result in outcome {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => return Err(op_error("delete topic", KafkaError::AdminOp(code))),
            }
        }
        Ok(())
    }

    /// The topic's partition count, `None` when it does not exist.
    async fn partition_count(&self, topic: &str) -> Result<Option<i32>> {
        let client = self.metadata.clone();
        let timeout = self.config.connect_timeout;
        let name = topic.to_owned();
        blocking(move || {
            let metadata = client.fetch_metadata(Some(&name), timeout)?;
            Ok(metadata
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .and_then(|t| match t.error() {
                    None if !t.partitions().is_empty() => Some(t.partitions().len() as i32),
                    _ => None,
                }))
        })
        .await
        .map_err(|e| op_error("fetch topic metadata", e))
    }

    /// Creates the topic; returns its partition count.
    async fn create(&self, topic: &str, partitions: i32) -> Result<i32> {
        let config = &self.config;
        let new = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(config.replication_factor),
        );
        let options = AdminOptions::new()
            .request_timeout(Some(config.connect_timeout))
            .operation_timeout(Some(config.connect_timeout));
        let outcome = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| op_error("create topic", e))?;
        for result in outcome {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(op_error("create topic", KafkaError::AdminOp(code)));
                }
            }
        }
        // Creation takes effect asynchronously on some brokers; wait until
        // the metadata shows it (and learn its real partition count if
        // someone else created it first).
        let deadline = tokio::time::Instant::now() + config.connect_timeout;
        let mut pauses =
            Backoff::new(Duration::from_millis(50), Duration::from_millis(500)).delays();
        loop {
            if let Some(n) = self.partition_count(topic).await? {
                tracing::debug!(topic, partitions = n, "kafka topic ready");
                return Ok(n);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    operation: "create topic",
                    after: config.connect_timeout,
                });
            }
            let pause = pauses.next().unwrap_or_default();
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
        }
    }
}

/// What a use of a topic that waited for another's look-up reports when
/// that look-up failed: the same variant, the cause as text.
fn shared_error(error: &Error) -> Error {
    match error {
        Error::Timeout { operation, after } => Error::Timeout {
            operation,
            after: *after,
        },
        Error::TopicNotFound(topic) => Error::TopicNotFound(topic.clone()),
        Error::Broker {
            broker,
            operation,
            kind,
            source,
        } => Error::broker(broker, operation, *kind, chain(source.as_ref())),
        other => Error::broker(
            crate::error::BROKER,
            "create topic",
            courier_core::BrokerErrorKind::Other,
            chain(other),
        ),
    }
}
