//! Subscriptions: provisioning a group, and the stream that hands out
//! deliveries within the prefetch limit, redeliveries first.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use courier_core::adapter::TaskSet;
use courier_core::{Delivery, DeliveryStream, Error, Result, Subscription};
use futures::Stream;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::{mpsc, watch};

use crate::client::{blocking, client_config, millis};
use crate::config::KafkaConfig;
use crate::consumer::{self, SessionContext};
use crate::delivery::deliver;
use crate::error::op_error;
use crate::flow::{Fetched, Flow, Pending};
use crate::group::{group_client, pin_group_start};
use crate::publisher::Producer;

/// The delivery stream of one subscription. Dropping it ends the
/// subscription like closing does.
struct KafkaStream {
    flow: Arc<Flow>,
    fetched: mpsc::UnboundedReceiver<Fetched>,
    /// Records received from the poll thread and not yet taken (they count
    /// as buffered until taken): the rest of the last batch, taken from
    /// where the poll thread put them. A record is moved once on its way
    /// out (copied into a queue first, it was moved twice: it is large).
    received: std::vec::IntoIter<Pending>,
    done: bool,
}

impl Stream for KafkaStream {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done || this.flow.is_ending() {
            return Poll::Ready(None);
        }
        loop {
            if this.flow.in_flight.load(Ordering::Acquire) >= this.flow.prefetch {
                this.flow.waker.register(cx.waker());
                if this.flow.in_flight.load(Ordering::Acquire) >= this.flow.prefetch {
                    return Poll::Pending;
                }
            }
            let again = this.flow.redeliver.lock().pop_front();
            if let Some(pending) = again {
                if pending.partition.hand_out(pending.offset) {
                    return Poll::Ready(Some(Ok(deliver(&this.flow, pending))));
                }
                continue;
            }
            if let Some(pending) = this.received.next() {
                this.flow.take_buffered();
                if pending.partition.hand_out(pending.offset) {
                    return Poll::Ready(Some(Ok(deliver(&this.flow, pending))));
                }
                continue;
            }
            match this.fetched.poll_recv(cx) {
                Poll::Ready(Some(Fetched::Records(records))) => this.received = records.into_iter(),
                Poll::Ready(Some(Fetched::Failed(error))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    this.flow.waker.register(cx.waker());
                    if this.flow.is_ending() {
                        return Poll::Ready(None);
                    }
                    if this.flow.redeliver.lock().is_empty() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl Drop for KafkaStream {
    fn drop(&mut self) {
        self.flow.end();
    }
}

/// A running subscription, as the connection keeps it for `close`.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) flow: std::sync::Weak<Flow>,
    pub(crate) finished: watch::Receiver<bool>,
    pub(crate) tasks: TaskSet,
}

impl Running {
    /// Ends the subscription and waits (at most `timeout` in all) until
    /// its final commit is made, it left the group, and its tasks finished
    /// (delayed redeliveries are dropped: their records were not committed
    /// and come back to the group).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] naming `close` when that took longer.
    pub(crate) async fn stop(mut self, timeout: Duration) -> Result<()> {
        if let Some(flow) = self.flow.upgrade() {
            flow.closing.store(true, Ordering::Release);
            flow.end();
        }
        let started = std::time::Instant::now();
        let finished = self.finished.wait_for(|done| *done);
        if tokio::time::timeout(timeout, finished).await.is_err() {
            return Err(Error::Timeout {
                operation: "close",
                after: timeout,
            });
        }
        self.tasks
            .close_within(timeout.saturating_sub(started.elapsed()))
            .await
    }
}

/// Makes the group exist with its start position pinned (see
/// [`pin_group_start`]).
pub(crate) async fn provision(
    config: &Arc<KafkaConfig>,
    producer: &Producer,
    subscription: &Subscription,
) -> Result<()> {
    subscription.validate()?;
    let partitions = producer.topics.ensure(subscription.topic()).await?;
    let config = config.clone();
    let subscription = subscription.clone();
    blocking(move || {
        let client = group_client(&config, subscription.group())?;
        pin_group_start(
            &client,
            subscription.topic(),
            partitions,
            subscription.start_position(),
            config.connect_timeout,
        )
    })
    .await
    .map_err(|e| op_error("provision consumer group", e))
}

/// Provisions the group, joins it, and starts the poll thread.
pub(crate) async fn subscribe(
    config: &Arc<KafkaConfig>,
    producer: &Arc<Producer>,
    subscription: Subscription,
) -> Result<(DeliveryStream, Running)> {
    subscription.validate()?;
    let partitions = producer.topics.ensure(subscription.topic()).await?;
    let prefetch = usize::from(subscription.prefetch_count());
    let (flow, finished) = Flow::new(
        subscription.topic(),
        subscription.group(),
        producer.clone(),
        prefetch,
    );
    let context = SessionContext::new(
        config.clone(),
        flow.clone(),
        tokio::runtime::Handle::current(),
    );
    let consumer_config = config.clone();
    let consumer = blocking(move || {
        let consumer: BaseConsumer<SessionContext> =
            consumer_settings(&consumer_config, subscription.group())
                .create_with_context(context)?;
        pin_group_start(
            &consumer,
            subscription.topic(),
            partitions,
            subscription.start_position(),
            consumer_config.connect_timeout,
        )?;
        consumer.subscribe(&[subscription.topic()])?;
        Ok(consumer)
    })
    .await
    .map_err(|e| op_error("subscribe", e))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let runtime = tokio::runtime::Handle::current();
    consumer::start(consumer, flow.clone(), tx, runtime).map_err(|e| {
        Error::broker(
            crate::error::BROKER,
            "subscribe",
            courier_core::BrokerErrorKind::Other,
            format!("cannot start the poll thread: {e}"),
        )
    })?;
    let running = Running {
        flow: Arc::downgrade(&flow),
        finished,
        tasks: flow.tasks.clone(),
    };
    let stream = KafkaStream {
        flow,
        fetched: rx,
        received: Vec::new().into_iter(),
        done: false,
    };
    Ok((Box::pin(stream), running))
}

/// The consumer settings of a subscription.
fn consumer_settings(config: &KafkaConfig, group: &str) -> rdkafka::ClientConfig {
    let session = millis(config.session_timeout);
    client_config(
        config,
        [
            ("group.id", group.to_owned()),
            ("enable.auto.commit", "false".to_owned()),
            ("enable.auto.offset.store", "false".to_owned()),
            // Partitions without a committed offset were created after the
            // group was provisioned (provisioning commits a start offset for
            // every partition that exists): all their messages are new.
            ("auto.offset.reset", "earliest".to_owned()),
            ("enable.partition.eof", "false".to_owned()),
            ("session.timeout.ms", session.to_string()),
            (
                "heartbeat.interval.ms",
                (session / 3).clamp(1, 3000).to_string(),
            ),
            ("message.max.bytes", config.max_record().to_string()),
            // A record batch larger than this is never returned by some
            // brokers (tansu), which stalls the partition: allow the largest
            // batch courier's producer writes.
            ("max.partition.fetch.bytes", FETCH_BYTES.to_string()),
            // Once rdkafka holds `queued.min.messages` (100,000) fetched
            // records it stops fetching for this long (1 s by default): a
            // consumer draining them faster than that (on a backlog) then
            // sat idle most of every second.
            ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string()),
        ],
    )
}

/// See `max.partition.fetch.bytes` in [`consumer_settings`]: rdkafka's
/// largest producer batch (`batch.size`, 1 MB) and then some.
const FETCH_BYTES: usize = 16 * 1024 * 1024;

/// See `fetch.queue.backoff.ms` in [`consumer_settings`].
const FETCH_QUEUE_BACKOFF_MS: u32 = 50;
