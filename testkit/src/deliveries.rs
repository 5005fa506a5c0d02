//! Waiting for deliveries in tests, with a bound.

use std::time::Duration;

use courier_core::{Delivery, DeliveryStream, Message};
use futures::StreamExt;

/// The next delivery of `stream` within `patience`.
///
/// # Panics
///
/// When none arrives in time, the stream ends, or it yields an error.
pub async fn next_within(stream: &mut DeliveryStream, patience: Duration) -> Delivery {
    match tokio::time::timeout(patience, stream.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(e))) => panic!("stream yielded an error: {e} ({e:?})"),
        Ok(None) => panic!("stream ended while a delivery was expected"),
        Err(_) => panic!("no delivery within {patience:?}"),
    }
}

/// The sequence number a test message carries as its payload (`"17"`).
///
/// # Panics
///
/// When the payload is not a decimal number.
pub fn seq_of(message: &Message) -> usize {
    std::str::from_utf8(message.payload())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("payload is not a sequence number: {message:?}"))
}
