//! A publish RabbitMQ returned as unroutable, reported for the topic the
//! application published to.

use courier_core::{BrokerErrorKind, Error};

use crate::error::BROKER;

/// `error` as [`courier_core::unroutable::error`] naming `topic` when it
/// is an unroutable publish (its [`AmqpError::Unroutable`](crate::AmqpError::Unroutable),
/// naming the exchange and RabbitMQ's reply, stays as the cause); any
/// other error unchanged.
pub(crate) fn naming_topic(error: Error, topic: &str) -> Error {
    match error {
        Error::Broker {
            kind: BrokerErrorKind::Unroutable,
            source,
            ..
        } => courier_core::unroutable::error(BROKER, topic, Some(source)),
        other => other,
    }
}
