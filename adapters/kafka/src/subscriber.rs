//! Subscriptions: provisioning a group, and the stream that hands out
//! deliveries within the prefetch limit, redeliveries first.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use courier_core::{Delivery, DeliveryStream, Error, Message, Result, Subscription};
use futures::Stream;
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::{mpsc, watch};

use crate::config::KafkaConfig;
use crate::consumer::{self, SessionContext};
use crate::delivery::KafkaAcker;
use crate::error::op_error;
use crate::partition::Partition;
use crate::publisher::Producer;
use crate::topics::{blocking, client_config, group_client, millis, pin_group_start};

/// A fetched record on its way to the application.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) partition: Arc<Partition>,
    pub(crate) offset: i64,
    pub(crate) message: Message,
    /// Deliveries so far in this session (0 before the first).
    pub(crate) deliveries: u32,
}

/// What the poll thread sends the stream.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// A record to hand out.
    Record(Pending),
    /// The consumer failed for good; the stream ends after this.
    Failed(Error),
}

/// What one subscription's stream, poll thread and deliveries share.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) topic: Arc<str>,
    pub(crate) group: Arc<str>,
    pub(crate) producer: Arc<Producer>,
    prefetch: usize,
    /// Deliveries handed out and not yet settled or given back.
    in_flight: AtomicUsize,
    /// Records fetched and sent to the stream but not yet taken by it.
    buffered: AtomicUsize,
    /// Deliveries given back (nack, drop), delivered before new records.
    redeliver: Mutex<VecDeque<Pending>>,
    waker: AtomicWaker,
    /// The subscription is ending (closed, or its stream dropped).
    ending: AtomicBool,
    /// The connection is closing: the subscription ends without waiting
    /// for its deliveries to be settled.
    closing: AtomicBool,
    /// The poll thread, woken when the stream takes records.
    poller: Mutex<Option<std::thread::Thread>>,
    /// Becomes `true` when the poll thread has committed and left the group.
    finished: watch::Sender<bool>,
}

impl Flow {
    fn new(
        topic: &str,
        group: &str,
        producer: Arc<Producer>,
        prefetch: usize,
    ) -> (Arc<Self>, watch::Receiver<bool>) {
        let (finished, done) = watch::channel(false);
        let flow = Flow {
            topic: Arc::from(topic),
            group: Arc::from(group),
            producer,
            prefetch,
            in_flight: AtomicUsize::new(0),
            buffered: AtomicUsize::new(0),
            redeliver: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            ending: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            poller: Mutex::new(None),
            finished,
        };
        (Arc::new(flow), done)
    }

    /// At most this many records wait in the stream's buffer before the
    /// poll thread stops fetching.
    pub(crate) fn high_water(&self) -> usize {
        (self.prefetch * 2).max(64)
    }

    /// The poll thread fetches again once the buffer is down to this.
    pub(crate) fn low_water(&self) -> usize {
        self.high_water() / 2
    }

    pub(crate) fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Acquire)
    }

    /// Counts a record sent to the stream.
    pub(crate) fn add_buffered(&self) {
        self.buffered.fetch_add(1, Ordering::AcqRel);
    }

    fn take_buffered(&self) {
        let before = self.buffered.fetch_sub(1, Ordering::AcqRel);
        if before == self.low_water() + 1 {
            self.wake_poller();
        }
    }

    pub(crate) fn set_poller(&self, thread: std::thread::Thread) {
        *self.poller.lock() = Some(thread);
    }

    fn wake_poller(&self) {
        if let Some(thread) = &*self.poller.lock() {
            thread.unpark();
        }
    }

    pub(crate) fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    /// Whether the connection is closing (see [`Running::stop`]).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Ends the subscription: the stream ends, the poll thread commits and
    /// leaves the group.
    pub(crate) fn end(&self) {
        if !self.ending.swap(true, Ordering::AcqRel) {
            self.waker.wake();
            self.wake_poller();
        }
    }

    /// Called by the poll thread when it is done.
    pub(crate) fn set_finished(&self) {
        self.finished.send_replace(true);
        self.waker.wake();
    }

    /// A settled or given-back delivery frees a prefetch slot.
    pub(crate) fn release(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == self.prefetch {
            self.waker.wake();
        }
    }

    /// Queues a given-back delivery to come next.
    pub(crate) fn redeliver_front(&self, pending: Pending) {
        self.redeliver.lock().push_front(pending);
        self.waker.wake();
    }

    fn deliver(self: &Arc<Self>, mut pending: Pending) -> Delivery {
        pending.deliveries += 1;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let acker = KafkaAcker {
            flow: self.clone(),
            partition: pending.partition,
            offset: pending.offset,
            deliveries: pending.deliveries,
        };
        courier_core::adapter::delivery(
            pending.message,
            self.topic.clone(),
            Box::new(acker),
            Some(pending.deliveries),
        )
    }
}

/// The delivery stream of one subscription. Dropping it ends the
/// subscription like closing does.
struct KafkaStream {
    flow: Arc<Flow>,
    fetched: mpsc::UnboundedReceiver<Fetched>,
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
                    return Poll::Ready(Some(Ok(this.flow.deliver(pending))));
                }
                continue;
            }
            match this.fetched.poll_recv(cx) {
                Poll::Ready(Some(Fetched::Record(pending))) => {
                    this.flow.take_buffered();
                    if pending.partition.hand_out(pending.offset) {
                        return Poll::Ready(Some(Ok(this.flow.deliver(pending))));
                    }
                }
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
}

impl Running {
    /// Ends the subscription and waits (at most `timeout`) until its final
    /// commit is made and it left the group.
    pub(crate) async fn stop(mut self, timeout: Duration) {
        if let Some(flow) = self.flow.upgrade() {
            flow.closing.store(true, Ordering::Release);
            flow.end();
        }
        let _ = tokio::time::timeout(timeout, self.finished.wait_for(|done| *done)).await;
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
    };
    let stream = KafkaStream {
        flow,
        fetched: rx,
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
        ],
    )
}

/// See `max.partition.fetch.bytes` in [`consumer_settings`]: rdkafka's
/// largest producer batch (`batch.size`, 1 MB) and then some.
const FETCH_BYTES: usize = 16 * 1024 * 1024;
