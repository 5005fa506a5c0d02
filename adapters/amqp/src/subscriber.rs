//! Consuming: one queue per consumer group, one channel per subscription,
//! resumed after a lost connection.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};
use std::time::Instant;

use courier_core::{
    Close, Delivery, DeliveryStream, Error, MessageId, Result, Subscriber, Subscription,
    async_trait,
};
use futures::{Stream, StreamExt};
use lapin::Consumer;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::codec;
use crate::config::{AmqpConfig, QueueType};
use crate::connection::{Link, Session};
use crate::delivery::{AmqpAcker, ConsumerChannel, Group};
use crate::error;
use crate::leader;
use crate::topology;

/// Receives from RabbitMQ: each consumer group is a durable queue bound to
/// the topic's exchange; each subscription is a consumer on a channel of
/// its own with `basic.qos` set to the subscription's prefetch.
///
/// After a lost connection the adapter reconnects, declares the topology
/// again and resumes every subscription: existing streams keep yielding.
/// Deliveries handed out before the loss cannot be settled any more (their
/// `ack` fails with a [`StaleDelivery`](crate::AmqpError::StaleDelivery)
/// source); the broker delivers those messages again.
#[derive(Debug)]
pub struct AmqpSubscriber {
    link: Arc<Link>,
    leaderless: Arc<leader::Leaderless>,
}

impl AmqpSubscriber {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        AmqpSubscriber {
            link,
            leaderless: Arc::default(),
        }
    }

    /// Connects a subscriber of its own.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] or a typed [`Error::Connect`].
    pub async fn connect(url: &str, config: AmqpConfig) -> Result<Self> {
        let (url, config) = crate::prepare(url, config)?;
        Ok(AmqpSubscriber::new(
            Link::open(&url, Arc::new(config), "subscriber").await?,
        ))
    }

    /// Declares the group's topology and checks that its queue has a
    /// leader that answers (see [`leader::check`]).
    async fn declared(&self, group: &Arc<Group>, operation: &'static str) -> Result<()> {
        let config = self.link.config().clone();
        self.link
            .run(operation, |session| {
                let (group, config) = (group.clone(), config.clone());
                async move { declare_group(&session, &config, &group).await }
            })
            .await?;
        let session = self.link.session().await?;
        let checked = leader::check(&session, &config, &group.queue, operation).await;
        self.leaderless
            .checked(&group.topic, &group.queue, &checked);
        checked
    }

    /// The quorum queues found without a leader.
    pub(crate) fn leaderless(&self) -> &leader::Leaderless {
        &self.leaderless
    }

    fn group(&self, subscription: &Subscription) -> Result<Arc<Group>> {
        subscription.validate()?;
        if self.link.is_closed() {
            return Err(Error::Closed("subscriber"));
        }
        let config = self.link.config();
        Ok(Arc::new(Group {
            link: self.link.clone(),
            topic: Arc::from(subscription.topic()),
            group: subscription.group().to_owned(),
            exchange: topology::exchange_name(config, subscription.topic()),
            queue: topology::queue_name(config, subscription.topic(), subscription.group()),
            prefetch: subscription.prefetch_count(),
            ending: AtomicBool::new(false),
        }))
    }
}

/// Declares the group's exchange, queue and binding; for a quorum queue
/// also the exchange of the topic's dead-letter topic, where the broker
/// moves a message past the queue's delivery limit.
async fn declare_group(session: &Session, config: &AmqpConfig, group: &Group) -> lapin::Result<()> {
    session.ensure_exchange(&group.exchange).await?;
    let dead_letters = topology::dead_letter_exchange(config, &group.topic);
    if let Some(exchange) = &dead_letters {
        session.ensure_exchange(exchange).await?;
    }
    let dead_letters = dead_letters.as_deref();
    session
        .declare(|channel| async move {
            topology::declare_group_queue(
                &channel,
                config,
                &group.exchange,
                &group.queue,
                dead_letters,
            )
            .await
        })
        .await
        .inspect_err(|_| {
            // The exchange may have been deleted since it was declared.
            session.forget_exchanges();
        })
}

/// A consumer on a channel of its own.
struct Active {
    channel: Arc<ConsumerChannel>,
    consumer: Consumer,
}

/// Declares the topology and starts consuming.
async fn start(session: &Session, group: &Arc<Group>) -> lapin::Result<Active> {
    declare_group(session, group.link.config(), group).await?;
    let channel = session.guard(session.connection().create_channel()).await?;
    let channel = Arc::new(ConsumerChannel {
        channel,
        group: group.clone(),
    });
    let tag = format!("courier-{}", MessageId::new());
    let queue = ShortString::try_new(group.queue.as_str()).unwrap_or_else(|_| "".into());
    let consumer = session
        .guard(async {
            channel
                .channel
                .basic_qos(group.prefetch, BasicQosOptions::default())
                .await?;
            channel
                .channel
                .basic_consume(
                    queue,
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        })
        .await?;
    Ok(Active { channel, consumer })
}

/// What the stream's channel carries.
enum Item {
    Delivery(Delivery, Arc<ConsumerChannel>),
    Failed(Error),
}

/// Moves deliveries from the consumer to the stream; after a lost
/// connection or a cancelled consumer, starts consuming again.
async fn pump(
    group: Arc<Group>,
    mut session: Arc<Session>,
    mut active: Active,
    to_stream: mpsc::UnboundedSender<Item>,
    stop: CancellationToken,
) {
    let link = group.link.clone();
    let counted = link.config().queue_type == QueueType::Quorum;
    loop {
        let ended = loop {
            let next = tokio::select! {
                biased;
                () = stop.cancelled() => {
                    cancel(&active).await;
                    return;
                }
                next = active.consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let item = deliver(&active.channel, delivery, counted);
                    if to_stream.send(item).is_err() {
                        cancel(&active).await;
                        return;
                    }
                }
                Some(Err(e)) => break Some(e),
                // The broker cancelled the consumer (queue deleted, quorum
                // leader moved, ...).
                None => break None,
            }
        };
        drop(active);
        if stop.is_cancelled() {
            return;
        }
        match &ended {
            Some(e) if session.failed(e) => link.broken(&session),
            Some(e) => {
                tracing::warn!(queue = %group.queue, error = %e, "consumer channel closed; consuming again")
            }
            None => {
                tracing::warn!(queue = %group.queue, "consumer cancelled by the broker; consuming again")
            }
        }
        match resume(&group, &stop).await {
            Ok(Some((new_session, new_active))) => {
                session = new_session;
                active = new_active;
            }
            Ok(None) => return,
            Err(e) => {
                let _ = to_stream.send(Item::Failed(e));
                return;
            }
        }
    }
}

/// Reconnects if needed and consumes again, retrying (with the reconnect
/// policy) also when the broker refuses for a while, as a restarting
/// broker's queues do. `None` when stopped.
async fn resume(
    group: &Arc<Group>,
    stop: &CancellationToken,
) -> Result<Option<(Arc<Session>, Active)>> {
    let link = &group.link;
    let policy = link.config().reconnect;
    let started = Instant::now();
    let mut failures = 0;
    loop {
        let session = match link.session().await {
            Ok(session) => session,
            Err(Error::Closed(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if stop.is_cancelled() {
            return Ok(None);
        }
        match start(&session, group).await {
            Ok(active) => {
                tracing::info!(queue = %group.queue, "consuming again");
                return Ok(Some((session, active)));
            }
            Err(e) => {
                if session.failed(&e) {
                    link.broken(&session);
                }
                failures += 1;
                if started.elapsed() >= policy.give_up_after {
                    return Err(error::from_lapin("subscribe", e));
                }
                tracing::warn!(queue = %group.queue, error = %e, "cannot consume yet");
                tokio::select! {
                    () = tokio::time::sleep(policy.delay(failures)) => {}
                    () = stop.cancelled() => return Ok(None),
                }
            }
        }
    }
}

/// Stops the consumer. Normally with `basic.cancel`: deliveries the broker
/// had already sent stay unsettled on the channel, which stays open until
/// the deliveries handed out are settled, and are requeued when it closes.
///
/// A single-active-consumer group hands over to the next consumer as soon
/// as this one is cancelled, while its messages are still out; closing the
/// channel instead returns them first, so the next consumer continues in
/// order. Deliveries handed out then cannot be settled any more (the
/// broker has requeued them).
async fn cancel(active: &Active) {
    if !active.channel.is_open() {
        return;
    }
    let channel = &active.channel.channel;
    let stopping = async {
        let link = &active.channel.group.link;
        if link.config().single_active_consumer {
            link.settle_grace().await;
            channel.close(200, "subscription ended".into()).await
        } else {
            channel
                .basic_cancel(active.consumer.tag(), BasicCancelOptions::default())
                .await
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stopping).await;
}

fn deliver(
    channel: &Arc<ConsumerChannel>,
    delivery: lapin::message::Delivery,
    counted: bool,
) -> Item {
    let lapin::message::Delivery {
        properties,
        data,
        acker,
        ..
    } = delivery;
    let decoded = codec::decode(&properties, data);
    let delivery_count = counted.then(|| decoded.delivery_count());
    let acker = AmqpAcker {
        acker,
        channel: channel.clone(),
        delivery_count,
    };
    let delivery = courier_core::adapter::delivery(
        decoded.message,
        channel.group.topic.clone(),
        Box::new(acker),
        delivery_count,
    );
    Item::Delivery(delivery, channel.clone())
}

/// The stream of one subscription.
struct AmqpStream {
    group: Arc<Group>,
    from_pump: mpsc::UnboundedReceiver<Item>,
    closed: CancellationToken,
    failed: bool,
    _stop: DropGuard,
}

impl Drop for AmqpStream {
    fn drop(&mut self) {
        // Before the fields go: the deliveries still queued here are then
        // dropped without a nack each (see `Group::ending`).
        self.group.end();
    }
}

impl Stream for AmqpStream {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.closed.is_cancelled() || self.failed {
            return Poll::Ready(None);
        }
        loop {
            return match self.from_pump.poll_recv(cx) {
                Poll::Ready(Some(Item::Delivery(delivery, channel))) => {
                    if !channel.is_open() {
                        // Its channel died while it waited here: it cannot
                        // be settled, and the broker delivers it again.
                        drop(delivery);
                        continue;
                    }
                    Poll::Ready(Some(Ok(delivery)))
                }
                Poll::Ready(Some(Item::Failed(e))) => {
                    self.failed = true;
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

#[async_trait]
impl Subscriber for AmqpSubscriber {
    async fn provision(&self, subscription: &Subscription) -> Result<()> {
        let group = self.group(subscription)?;
        let bound = self.link.config().confirm_timeout;
        courier_core::error::within("provision", bound, self.declared(&group, "provision")).await
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        let group = self.group(&subscription)?;
        let bound = self.link.config().confirm_timeout;
        let (session, active) = courier_core::error::within("subscribe", bound, async {
            self.declared(&group, "subscribe").await?;
            self.link
                .run("subscribe", |session| {
                    let group = group.clone();
                    async move {
                        let active = start(&session, &group).await?;
                        Ok((session, active))
                    }
                })
                .await
        })
        .await?;
        let (to_stream, from_pump) = mpsc::unbounded_channel();
        let stop = self.link.closed().child_token();
        self.link.tasks().spawn(
            "consumer pump",
            pump(group.clone(), session, active, to_stream, stop.clone()),
        );
        Ok(Box::pin(AmqpStream {
            group,
            from_pump,
            closed: self.link.closed().clone(),
            failed: false,
            _stop: stop.drop_guard(),
        }))
    }

    fn messaging_system(&self) -> &'static str {
        crate::MESSAGING_SYSTEM
    }

    async fn lag(&self, topic: &str, group: &str) -> Result<courier_core::telemetry::Lag> {
        crate::lag::lag(&self.link, topic, group).await
    }
}

#[async_trait]
impl Close for AmqpSubscriber {
    fn health(&self) -> courier_core::telemetry::Health {
        crate::lag::health(&self.link)
    }

    async fn close(&self) -> Result<()> {
        self.link.close().await
    }
}
