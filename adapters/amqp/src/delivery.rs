//! Settling deliveries: ack, requeue, delayed requeue, dead-letter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use courier_core::adapter::Acknowledger;
use courier_core::{BrokerErrorKind, DeadLetter, Error, Message, Nack, Result, async_trait};
use futures::FutureExt;
use lapin::Acker;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};

use crate::codec;
use crate::connection::{Link, unless_dead};
use crate::error::{self, AmqpError, broker};
use crate::publisher::{Route, send};
use crate::topology;

/// One consumer group's queue, as a subscription consumes it.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) link: Arc<Link>,
    pub(crate) topic: Arc<str>,
    pub(crate) group: String,
    pub(crate) exchange: String,
    pub(crate) queue: String,
    pub(crate) prefetch: u16,
    /// Set when the subscription's stream was dropped: the deliveries it
    /// still held are left unsettled, to come back (in order) when their
    /// channel closes, rather than nacked one by one (which would let the
    /// broker send them again before the consumer is cancelled).
    pub(crate) ending: AtomicBool,
}

impl Group {
    pub(crate) fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    pub(crate) fn end(&self) {
        self.ending.store(true, Ordering::Release);
    }
}

/// The channel a consumer receives on. It stays open while deliveries
/// from it are unsettled (so they can still be settled after their stream
/// ended) and is closed when the last of them and the consumer are gone;
/// the broker then requeues whatever it had sent and nobody settled.
#[derive(Debug)]
pub(crate) struct ConsumerChannel {
    pub(crate) channel: Channel,
    pub(crate) group: Arc<Group>,
}

impl ConsumerChannel {
    pub(crate) fn is_open(&self) -> bool {
        self.channel.status().connected()
    }
}

impl Drop for ConsumerChannel {
    fn drop(&mut self) {
        if !self.is_open() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let channel = self.channel.clone();
            let link = self.group.link.clone();
            let closing = link.clone();
            link.tasks().spawn_on(
                "close a consumer channel",
                async move {
                    closing.settle_grace().await;
                    let _ = channel.close(200, "subscription ended".into()).await;
                },
                &runtime,
            );
        }
    }
}

/// Settles one delivery of a [`ConsumerChannel`].
#[derive(Debug)]
pub(crate) struct AmqpAcker {
    pub(crate) acker: Acker,
    pub(crate) channel: Arc<ConsumerChannel>,
    /// Deliveries so far, this one included, when the queue counts them.
    pub(crate) delivery_count: Option<u32>,
}

/// What a settlement the broker did not take means.
fn settled(operation: &'static str, outcome: lapin::Result<bool>) -> Result<()> {
    match outcome {
        Ok(true) => Ok(()),
        // The acker refuses when its channel is gone: the broker has
        // requeued the message already.
        Ok(false) => Err(broker(
            operation,
            BrokerErrorKind::Conflict,
            AmqpError::StaleDelivery,
        )),
        Err(e) => Err(error::from_lapin(operation, e)),
    }
}

impl AmqpAcker {
    fn group(&self) -> &Group {
        &self.channel.group
    }

    /// `basic.ack`; fails if the channel dies before it was sent.
    async fn basic_ack(&self) -> lapin::Result<bool> {
        let channel = &self.channel;
        let acked = unless_dead(self.acker.ack(BasicAckOptions::default()), || {
            channel.is_open()
        })
        .await
        .unwrap_or(Ok(false));
        self.group().link.settled();
        acked
    }

    /// `basic.nack` with requeue; fails if the channel dies before it was sent.
    async fn basic_requeue(&self) -> lapin::Result<bool> {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let channel = &self.channel;
        let nacked = unless_dead(self.acker.nack(options), || channel.is_open())
            .await
            .unwrap_or(Ok(false));
        self.group().link.settled();
        nacked
    }

    fn check_usable(&self, operation: &'static str) -> Result<()> {
        if self.acker.usable() {
            Ok(())
        } else {
            Err(broker(
                operation,
                BrokerErrorKind::Conflict,
                AmqpError::StaleDelivery,
            ))
        }
    }

    async fn requeue(&self) -> Result<()> {
        settled("nack", self.basic_requeue().await)
    }

    /// After a failure to move the message: put it back, return the failure.
    async fn requeue_after_failure(&self, failure: Error) -> Result<()> {
        let _ = self.requeue().await;
        Err(failure)
    }

    /// Publishes a copy to a retry queue whose TTL is the delay and which
    /// dead-letters back to the group's queue, then acks the original.
    async fn requeue_after(&self, message: &Message, delay: Duration) -> Result<()> {
        self.check_usable("nack")?;
        let group = self.group();
        let bucket_ms = match topology::retry_bucket(delay) {
            Ok(bucket) => bucket,
            Err(e) => {
                return self
                    .requeue_after_failure(broker("nack", BrokerErrorKind::Rejected, e))
                    .await;
            }
        };
        let retry_queue = topology::retry_queue_name(&group.queue, bucket_ms);
        if let Err(e) = codec::check(message, group.link.config().max_payload) {
            return self.requeue_after_failure(e).await;
        }
        let route = Route::RetryQueue {
            queue: &retry_queue,
            bucket_ms,
            target: &group.queue,
        };
        let copy = std::slice::from_ref(message);
        if let Err(e) = send(&group.link, route, true, copy, self.delivery_count).await {
            return self.requeue_after_failure(e).await;
        }
        settled("nack", self.basic_ack().await)
    }

    /// Publishes the dead-letter copy to the dead-letter topic (which must
    /// have a group: a copy no queue receives is refused), then acks the
    /// original.
    async fn dead_letter(&self, message: &Message, dead_letter: DeadLetter) -> Result<()> {
        self.check_usable("nack")?;
        if let Err(e) = self.publish_copy(message, &dead_letter).await {
            return self.requeue_after_failure(e).await;
        }
        settled("nack", self.basic_ack().await)
    }

    /// Publishes the dead-letter copy (mandatory, confirmed); the original
    /// stays unsettled.
    async fn publish_copy(&self, message: &Message, dead_letter: &DeadLetter) -> Result<()> {
        let group = self.group();
        let (topic, copy) = dead_letter.to_message(message, &group.topic, &group.group)?;
        courier_core::name::validate_topic(&topic)?;
        let config = group.link.config();
        codec::check(&copy, config.max_payload)?;
        let exchange = topology::exchange_name(config, &topic);
        let route = Route::Exchange(&exchange);
        send(&group.link, route, true, std::slice::from_ref(&copy), None).await
    }
}

#[async_trait]
impl Acknowledger for AmqpAcker {
    async fn ack(self: Box<Self>, _message: &Message) -> Result<()> {
        settled("ack", self.basic_ack().await)
    }

    async fn nack(self: Box<Self>, message: &Message, nack: Nack) -> Result<()> {
        match nack {
            Nack::RequeueAfter(delay) if !delay.is_zero() => {
                self.requeue_after(message, delay).await
            }
            Nack::DeadLetter(dead_letter) => self.dead_letter(message, dead_letter).await,
            _ => self.requeue().await,
        }
    }

    async fn publish_dead_letter(
        &self,
        message: &Message,
        dead_letter: &DeadLetter,
    ) -> Option<Result<()>> {
        if !self.acker.usable() {
            // The channel is gone and the broker requeued the original:
            // holding it would retry for nothing.
            return None;
        }
        Some(self.publish_copy(message, dead_letter).await)
    }

    async fn settle_dead_lettered(self: Box<Self>, _message: &Message) -> Result<()> {
        settled("nack", self.basic_ack().await)
    }

    fn abandon(self: Box<Self>, _message: &Message) {
        if !self.acker.usable() {
            // The channel is gone; the broker requeued the message already.
            return;
        }
        if self.group().is_ending() {
            // Comes back when the channel closes, which dropping this
            // delivery may just have caused.
            return;
        }
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        // The first poll hands the nack to the connection's I/O loop; its
        // outcome needs no waiting for (if it fails, the channel is gone and
        // the broker requeues the message anyway). No runtime needed.
        let _ = self.acker.nack(options).now_or_never();
        self.group().link.settled();
    }
}
