//! placeholder

/// Real servers for tests (RabbitMQ, NATS, Kafka-protocol, PostgreSQL, Redis) through testcontainers.
#[cfg(feature = "fixtures")]
pub mod fixtures;
