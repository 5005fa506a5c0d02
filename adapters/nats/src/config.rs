//! Settings of the NATS JetStream adapter.

use std::time::Duration;

/// How JetStream stores a topic's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Storage {
    /// On disk: survives a server restart (the default).
    #[default]
    File,
    /// In memory: lost on restart.
    Memory,
}

/// Settings of a [`NatsBroker`](crate::NatsBroker).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsConfig {
    /// How long connecting may take before it fails with
    /// `ConnectErrorKind::TimedOut` (default 5 s).
    pub connect_timeout: Duration,
    /// How long a publish waits for the JetStream ack, and a settlement for
    /// the server's confirmation (default 10 s).
    pub request_timeout: Duration,
    /// Storage of streams courier creates.
    pub storage: Storage,
    /// The server's duplicate window for streams courier creates: a message
    /// published again with the same id within it is stored once (default 2 min,
    /// the server's own default).
    pub duplicate_window: Duration,
    /// How long the server waits for a settlement before it redelivers
    /// (default 30 s). A handler that runs longer sees its message again.
    pub ack_wait: Duration,
    /// How often the server delivers a message before it gives up; `None`
    /// for no limit (the default: the consumer runtime dead-letters instead).
    pub max_deliver: Option<u32>,
    /// Unsettled messages the server lets one consumer group hold
    /// (default 10,000); each stream also keeps to its own prefetch.
    pub max_ack_pending: u32,
    /// How long a pull request waits on the server for messages before it is
    /// renewed (default 1 s). Closing a connection or dropping a stream
    /// lets the pending request run out, so this bounds how long `close` takes.
    pub pull_expiry: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            storage: Storage::File,
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            max_ack_pending: 10_000,
            pull_expiry: Duration::from_secs(1),
        }
    }
}

impl NatsConfig {
    /// Sets [`NatsConfig::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`NatsConfig::storage`].
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Sets [`NatsConfig::duplicate_window`].
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Sets [`NatsConfig::ack_wait`].
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Sets [`NatsConfig::max_deliver`].
    pub fn max_deliver(mut self, max_deliver: Option<u32>) -> Self {
        self.max_deliver = max_deliver;
        self
    }
}

/// The JetStream stream for a topic: the topic with `.` replaced by `_`
/// (stream names cannot hold `.`). `orders.placed` → `orders_placed`.
pub fn stream_name(topic: &str) -> String {
    topic.replace('.', "_")
}

/// The durable consumer for a group: the group with `.` replaced by `_`.
pub fn consumer_name(group: &str) -> String {
    group.replace('.', "_")
}
