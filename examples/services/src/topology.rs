//! Declaring a flow's subscriptions on the broker.

use courier::{Broker, Subscription};

/// Declares each `(topic, group)` subscription, so that what is published
/// to the topic waits for the group even while no consumer of it runs
/// (idempotent: every service calls it at start).
///
/// # Errors
///
/// The broker's error.
pub async fn provision<'a>(
    broker: &Broker,
    subscriptions: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> courier::Result<()> {
    for (topic, group) in subscriptions {
        broker.provision(&Subscription::new(topic, group)).await?;
    }
    Ok(())
}
