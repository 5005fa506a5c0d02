//! Waiting for deliveries in tests, with a bound.

use std::time::Duration;

use courier_core::{Delivery, DeliveryStream};
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
