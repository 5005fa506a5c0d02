//! Topics and groups: existence checks, creation, and the offsets that
//! make a newly provisioned group start where its start position says.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use courier_core::{Error, Result, StartPosition};
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::error::{CourierContext, op_error};

/// Creates and looks up topics; remembers those known to exist.
pub(crate) struct Topics {
    config: Arc<KafkaConfig>,
    admin: AdminClient<CourierContext>,
    /// A consumer without group, for metadata requests (consumers never ask
    /// the broker to auto-create the topics they look up).
    metadata: Arc<BaseConsumer<CourierContext>>,
    /// Topics known to exist, with their partition count.
    known: Mutex<HashMap<String, i32>>,
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
            known: Mutex::new(HashMap::new()),
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
        if let Some(&partitions) = self.known.lock().get(topic) {
            return Ok(partitions);
        }
        let partitions = match self.partition_count(topic).await? {
            Some(n) => n,
            None if !self.config.create_topics => {
                return Err(Error::TopicNotFound(topic.to_owned()));
            }
            None => self.create(topic, partitions).await?,
        };
        self.known.lock().insert(topic.to_owned(), partitions);
        Ok(partitions)
    }

    /// Whether the topic exists (without creating it).
    pub(crate) async fn exists(&self, topic: &str) -> Result<bool> {
        if self.known.lock().contains_key(topic) {
            return Ok(true);
        }
        Ok(self.partition_count(topic).await?.is_some())
    }

    /// Forgets what is known about a topic (after the broker said it is
    /// unknown, say).
    pub(crate) fn forget(&self, topic: &str) {
        self.known.lock().remove(topic);
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
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs a blocking rdkafka call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> std::result::Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

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

/// Settings every client shares, then the client's own `settings`, then
/// [`KafkaConfig::rdkafka`].
pub(crate) fn client_config<'a>(
    config: &KafkaConfig,
    settings: impl IntoIterator<Item = (&'a str, String)>,
) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", &config.client_id)
        .set(
            "socket.connection.setup.timeout.ms",
            millis(config.connect_timeout).to_string(),
        );
    for (name, value) in settings {
        client.set(name, value);
    }
    client.set_log_level(crate::error::log_level());
    for (name, value) in &config.rdkafka {
        client.set(name, value);
    }
    client
}

/// A duration in whole milliseconds, at least 1.
pub(crate) fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}
