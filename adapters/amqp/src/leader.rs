//! Telling a quorum queue without a leader from a broker that is slow or
//! gone, so that `provision` and `subscribe` on it fail with a typed,
//! retryable error naming the queue instead of waiting for an answer that
//! never comes.
//!
//! What RabbitMQ (3.10 and 4.0) answers about a quorum queue left without a
//! leader by a hard kill right after its declaration: `queue.declare`,
//! passive or not, succeeds at once (the queue's metadata is intact) and
//! reports 0 messages and 0 consumers; `basic.consume` gets no answer (none
//! within 90 s), and a publish routed to it gets no confirm. Nothing says
//! "no leader". So the check is: the broker answers a passive declare of
//! the queue (it is alive and the queue exists), but a consume on the
//! queue does not start within [`leader_wait`].
//!
//! A queue that reports messages or consumers has a leader that answered
//! (a leaderless one reports neither), and is not probed further. An empty
//! one is probed with a consumer of prefetch 1 on a channel of its own,
//! closed at once: a message published in that instant may be delivered to
//! the probe and requeued (on a quorum queue its delivery count then counts
//! the probe too).

use std::time::Duration;

use courier_core::{BrokerErrorKind, Error, MessageId, Result};
use futures::FutureExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};

use crate::config::{AmqpConfig, QueueType};
use crate::connection::Session;
use crate::error::{AmqpError, broker, from_lapin};

/// How long each step of the check may take: a third of the confirm
/// timeout, at least one second, so that both steps together stay within
/// the operation's bound.
pub(crate) fn leader_wait(config: &AmqpConfig) -> Duration {
    (config.confirm_timeout / 3).max(Duration::from_secs(1))
}

/// Checks that the quorum queue `queue` has a leader that answers (a
/// no-op for classic queues).
///
/// # Errors
///
/// A retryable [`Error::Broker`] of kind
/// [`Unavailable`](BrokerErrorKind::Unavailable) whose source is
/// [`AmqpError::NoLeader`] when the queue does not answer although the
/// broker does; [`Error::Timeout`] naming `operation` when the broker does
/// not answer the passive declare; the broker's refusal otherwise.
pub(crate) async fn check(
    session: &Session,
    config: &AmqpConfig,
    queue: &str,
    operation: &'static str,
) -> Result<()> {
    if config.queue_type != QueueType::Quorum {
        return Ok(());
    }
    let wait = leader_wait(config);
    let name = ShortString::from(queue);
    let declared = courier_core::error::within(operation, wait, async {
        let channel = session
            .guard(session.connection().create_channel())
            .await
            .map_err(|e| from_lapin(operation, e))?;
        let passive = QueueDeclareOptions {
            passive: true,
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let declared = session
            .guard(channel.queue_declare(name.clone(), passive, FieldTable::default()))
            .await
            .map_err(|e| from_lapin(operation, e))?;
        Ok((channel, declared))
    })
    .await?;
    let (channel, declared) = declared;
    if declared.message_count() > 0 || declared.consumer_count() > 0 {
        let _ = channel.close(200, "leader check".into()).now_or_never();
        return Ok(());
    }
    let consuming = tokio::time::timeout(wait, async {
        session
            .guard(channel.basic_qos(1, BasicQosOptions::default()))
            .await?;
        let tag = format!("courier-leader-check-{}", MessageId::new());
        session
            .guard(channel.basic_consume(
                name.clone(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ))
            .await
    })
    .await;
    // The first poll sends channel.close; its answer needs no waiting for
    // (on a leaderless queue it would wait for the consume that never ends).
    let _ = channel.close(200, "leader check".into()).now_or_never();
    match consuming {
        Ok(Ok(_consumer)) => Ok(()),
        Ok(Err(e)) => Err(from_lapin(operation, e)),
        Err(_) => {
            tracing::warn!(queue, waited = ?wait, "quorum queue without a leader");
            Err(no_leader(operation, queue, wait))
        }
    }
}

/// The typed error for a quorum queue without a leader.
pub(crate) fn no_leader(operation: &'static str, queue: &str, waited: Duration) -> Error {
    broker(
        operation,
        BrokerErrorKind::Unavailable,
        AmqpError::NoLeader {
            queue: queue.to_owned(),
            waited,
        },
    )
}

/// The quorum queues this connection found without a leader, by topic, so
/// that a publish to the topic that gets no confirm says which queue is
/// the reason.
#[derive(Debug, Default)]
pub(crate) struct Leaderless(parking_lot::Mutex<std::collections::HashMap<String, String>>);

impl Leaderless {
    /// Records the outcome of a check of `queue`, a group queue of `topic`.
    pub(crate) fn checked(&self, topic: &str, queue: &str, outcome: &Result<()>) {
        let mut known = self.0.lock();
        match outcome {
            Err(Error::Broker { source, .. })
                if matches!(
                    source.downcast_ref::<AmqpError>(),
                    Some(AmqpError::NoLeader { .. })
                ) =>
            {
                known.insert(topic.to_owned(), queue.to_owned());
            }
            Ok(()) if known.get(topic).is_some_and(|q| q == queue) => {
                known.remove(topic);
            }
            _ => {}
        }
    }

    /// A publish to `topic` that timed out after `after`: the typed error
    /// naming the leaderless queue when one of the topic's queues is known
    /// to be one, else the timeout itself.
    pub(crate) fn explain(&self, topic: &str, timeout: Error) -> Error {
        match (&timeout, self.0.lock().get(topic)) {
            (Error::Timeout { operation, after }, Some(queue)) => {
                no_leader(operation, queue, *after)
            }
            _ => timeout,
        }
    }
}
