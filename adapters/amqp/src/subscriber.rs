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
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use lapin::Consumer;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use tokio_util::sync::WaitForCancellationFutureOwned;

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
/// A stream polls lapin's consumer itself: no task or channel stands
/// between the broker's delivery and the caller.
///
/// After a lost connection the adapter reconnects, declares the topology
/// again and resumes every subscription (a stream consumes again when it is
/// next polled): existing streams keep yielding.
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

/// Why a consumer stopped yielding: an error of its channel or
/// connection, or `None` when the broker cancelled it.
fn consumer_ended(group: &Group, session: &Session, ended: Option<&lapin::Error>) {
    match ended {
        Some(e) if session.failed(e) => group.link.broken(session),
        Some(e) => {
            tracing::warn!(queue = %group.queue, error = %e, "consumer channel closed; consuming again")
        }
        // The broker cancelled the consumer (queue deleted, quorum leader
        // moved, ...).
        None => {
            tracing::warn!(queue = %group.queue, "consumer cancelled by the broker; consuming again")
        }
    }
}

/// A consumer started again, on the session it was started on.
type Resumed = (Arc<Session>, Active);

/// Reconnects if needed and consumes again, retrying (with the reconnect
/// policy) also when the broker refuses for a while, as a restarting
/// broker's queues do. `None` when stopped.
async fn resume(group: Arc<Group>) -> Result<Option<Resumed>> {
    let link = &group.link;
    let stop = link.closed();
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
        match start(&session, &group).await {
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
) -> Delivery {
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
    courier_core::adapter::delivery(
        decoded.message,
        channel.group.topic.clone(),
        Box::new(acker),
        delivery_count,
    )
}

/// What a subscription's stream is doing.
enum State {
    /// Receiving from its consumer.
    Consuming(Arc<Session>, Active),
    /// Consuming again after its consumer stopped (see [`resume`]).
    Resuming(BoxFuture<'static, Result<Option<Resumed>>>),
    /// Closed, failed, or stopped.
    Ended,
}

/// The stream of one subscription. It polls lapin's consumer itself: a
/// delivery reaches the caller without a task or a channel in between.
/// After a lost connection or a cancelled consumer it consumes again,
/// while it is polled.
struct AmqpStream {
    group: Arc<Group>,
    state: State,
    /// Whether the queue counts deliveries (quorum queues).
    counted: bool,
    /// Ends the stream once the link is closed, also while it waits.
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Drop for AmqpStream {
    fn drop(&mut self) {
        // From now on a delivery handed out and dropped unsettled is not
        // nacked on its own: it comes back when its channel closes (see
        // `Group::ending`). So do those lapin still holds.
        self.group.end();
        let State::Consuming(_, active) = std::mem::replace(&mut self.state, State::Ended) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.group.link.tasks().spawn_on(
                "cancel a consumer",
                async move { cancel(&active).await },
                &runtime,
            );
        }
    }
}

impl Stream for AmqpStream {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.group.link.is_closed() {
            this.state = State::Ended;
        }
        loop {
            match &mut this.state {
                State::Ended => return Poll::Ready(None),
                State::Consuming(session, active) => match active.consumer.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(delivery))) => {
                        if !active.channel.is_open() {
                            // Its channel died while lapin held it: it
                            // cannot be settled, and the broker delivers it
                            // again.
                            continue;
                        }
                        let delivery = deliver(&active.channel, delivery, this.counted);
                        return Poll::Ready(Some(Ok(delivery)));
                    }
                    Poll::Ready(ended) => {
                        let error = match &ended {
                            Some(Err(e)) => Some(e),
                            _ => None,
                        };
                        consumer_ended(&this.group, session, error);
                        this.state = State::Resuming(Box::pin(resume(this.group.clone())));
                    }
                    Poll::Pending => break,
                },
                State::Resuming(resuming) => match resuming.as_mut().poll(cx) {
                    Poll::Ready(Ok(Some((session, active)))) => {
                        this.state = State::Consuming(session, active);
                    }
                    Poll::Ready(Ok(None)) => this.state = State::Ended,
                    Poll::Ready(Err(e)) => {
                        this.state = State::Ended;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Pending => break,
                },
            }
        }
        // Waiting: wake up also when the link closes.
        if this.closed.as_mut().poll(cx).is_ready() {
            this.state = State::Ended;
            return Poll::Ready(None);
        }
        Poll::Pending
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
        Ok(Box::pin(AmqpStream {
            counted: self.link.config().queue_type == QueueType::Quorum,
            group,
            state: State::Consuming(session, active),
            closed: Box::pin(self.link.closed().clone().cancelled_owned()),
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
