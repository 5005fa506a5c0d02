//! Consumer lag and connection health on NATS JetStream.

use async_nats::connection::State;
use async_nats::jetstream::consumer::pull;
use courier_core::telemetry::{Health, Lag};
use courier_core::{BrokerErrorKind, Error, Result};

use crate::config::{consumer_name, stream_name};
use crate::connection::Inner;
use crate::error::op_error;

/// The group's durable consumer's `num_pending` (not yet delivered) plus
/// `num_ack_pending` (delivered, not yet acked): exact, as the server
/// counts it.
pub(crate) async fn lag(inner: &Inner, topic: &str, group: &str) -> Result<Lag> {
    inner.check_open()?;
    let stream = inner
        .js
        .get_stream(stream_name(topic))
        .await
        .map_err(|e| op_error("lag: get stream", e))?;
    let consumer = stream
        .get_consumer::<pull::Config>(&consumer_name(group))
        .await
        .map_err(|e| Error::broker("nats", "lag: get consumer", BrokerErrorKind::Unavailable, e))?;
    let info = consumer
        .get_info()
        .await
        .map_err(|e| op_error("lag: consumer info", e))?;
    Ok(Lag::new(
        info.num_pending,
        Some(info.num_ack_pending as u64),
    ))
}

/// Usable while the client is connected and courier has not closed it.
pub(crate) fn health(inner: &Inner) -> Health {
    if inner.check_open().is_err() {
        return Health::Unusable("closed".into());
    }
    match inner.client.connection_state() {
        State::Connected => Health::Usable,
        State::Pending => Health::Unusable("reconnecting".into()),
        State::Disconnected => Health::Unusable("disconnected".into()),
    }
}
