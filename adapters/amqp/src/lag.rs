//! Consumer lag and connection health on RabbitMQ.

use courier_core::Result;
use courier_core::telemetry::{Health, Lag};
use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};

use crate::connection::Link;
use crate::topology;

/// The group queue's ready messages, from a passive `queue.declare`.
/// AMQP 0-9-1 does not report messages delivered and not yet acked, so
/// [`Lag::unacked`] is `None` and `total` counts only the ready ones.
pub(crate) async fn lag(link: &Link, topic: &str, group: &str) -> Result<Lag> {
    let queue = topology::queue_name(link.config(), topic, group);
    let declared = link
        .run("lag", |session| {
            let queue = ShortString::from(queue.clone());
            async move {
                session
                    .declare(|channel| async move {
                        channel
                            .queue_declare(
                                queue,
                                QueueDeclareOptions {
                                    passive: true,
                                    ..QueueDeclareOptions::default()
                                },
                                FieldTable::default(),
                            )
                            .await
                    })
                    .await
            }
        })
        .await?;
    Ok(Lag::new(u64::from(declared.message_count()), None))
}

/// Usable while the link has a live connection and is not closed.
pub(crate) fn health(link: &Link) -> Health {
    if link.is_closed() {
        Health::Unusable("closed".into())
    } else if link.is_connected() {
        Health::Usable
    } else {
        Health::Unusable("not connected (reconnecting on the next operation)".into())
    }
}
