//! Settings of the in-process broker.

/// Settings of a [`MemoryBroker`](crate::MemoryBroker).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// How many of the latest messages each topic keeps for groups created
    /// later with [`StartPosition::Earliest`](courier_core::StartPosition::Earliest).
    /// Messages waiting in a group's queue are never dropped, whatever this is.
    pub retention: usize,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
}

/// Default [`MemoryConfig::retention`].
pub const DEFAULT_RETENTION: usize = 10_000;
/// Default [`MemoryConfig::max_payload`]: 16 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            retention: DEFAULT_RETENTION,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

impl MemoryConfig {
    /// Sets [`MemoryConfig::retention`].
    pub fn retention(mut self, messages: usize) -> Self {
        self.retention = messages;
        self
    }

    /// Sets [`MemoryConfig::max_payload`].
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }
}
