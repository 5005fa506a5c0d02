//! The poll thread of a subscription: fetches records, decodes them, tracks
//! their offsets per partition, commits, and handles rebalances.
//!
//! It runs on a thread of its own because rdkafka runs rebalance callbacks
//! inside `poll`, and the revoke callback waits (up to
//! [`KafkaConfig::revoke_timeout`]) for the deliveries of revoked
//! partitions to be settled. Blocking an async worker that long could stall
//! the very handlers it waits for.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use courier_core::resilience::deadline_after;

use bytes::Bytes;
use courier_core::MessageId;
use courier_core::adapter::origin::{self, Origin};
use courier_core::adapter::wire;
use courier_core::delivery::{DLQ_GROUP, DLQ_ORIGINAL_TOPIC, DLQ_REASON};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::assignment::{Assignment, Lookup};
use crate::client::CourierContext;
use crate::config::KafkaConfig;
use crate::error::BROKER;
use crate::flow::{Fetched, Flow, Pending};
use crate::partition::Partition;
use crate::publisher::Record;
use crate::settled;
use crate::watermark::{Received, skipped_offsets};

/// How long one `poll` blocks when nothing arrives; bounds how quickly the
/// thread notices that the subscription ends.
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How long the thread sleeps at a time while the stream's buffer is full
/// (it is woken as soon as the stream has taken half of it).
const FULL_WAIT: Duration = Duration::from_millis(200);
/// How long an ending subscription waits for a join under way to complete.
const JOIN_WAIT: Duration = Duration::from_secs(5);
/// How long an ending subscription serves rebalance events before leaving.
const JOIN_SETTLE: Duration = Duration::from_millis(200);
/// How long the buffer may stay full before fetching is paused.
const PAUSE_AFTER: Duration = Duration::from_secs(3);
/// The smallest batch the poll thread makes room for.
const BATCH_CAPACITY: usize = 16;

/// The consumer's context: the subscription's partitions and the rebalance
/// callbacks that keep them.
#[derive(Debug)]
pub(crate) struct SessionContext {
    base: CourierContext,
    config: Arc<KafkaConfig>,
    flow: Arc<Flow>,
    partitions: Assignment,
    /// The last asynchronous commit failed: commit everything next time.
    commit_failed: AtomicBool,
    /// The assignment changed since the poll loop last looked.
    reassigned: AtomicBool,
    /// Runs the async parts of rebalances (the settled-offsets store).
    runtime: tokio::runtime::Handle,
    /// The group gave this member its assignment and no rebalance is
    /// under way (false while joining).
    joined: AtomicBool,
}

impl SessionContext {
    pub(crate) fn new(
        config: Arc<KafkaConfig>,
        flow: Arc<Flow>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        SessionContext {
            runtime,
            base: CourierContext::default(),
            config,
            flow,
            partitions: Assignment::default(),
            commit_failed: AtomicBool::new(false),
            reassigned: AtomicBool::new(false),
            joined: AtomicBool::new(false),
        }
    }

    /// New partitions: read their committed offsets' metadata so records an
    /// earlier owner settled out of order are not delivered again.
    fn assign(&self, consumer: &BaseConsumer<Self>, assigned: &TopicPartitionList) {
        let committed = consumer
            .committed_offsets(assigned.clone(), self.config.connect_timeout)
            .inspect_err(|e| {
                tracing::warn!(
                    topic = %self.flow.topic, error = %e,
                    "cannot read committed offsets; records settled out of order before \
                     the rebalance may be delivered again"
                );
            })
            .ok();
        // Positions and their metadata; an empty one may be a broker that
        // does not keep metadata: then look at the companion records.
        let positions: HashMap<i32, (i64, String)> = committed
            .iter()
            .flat_map(|c| c.elements())
            .filter_map(|c| match c.offset() {
                Offset::Offset(offset) => Some((c.partition(), (offset, c.metadata().to_owned()))),
                _ => None,
            })
            .collect();
        let without: Vec<i32> = positions
            .iter()
            .filter(|(_, (_, metadata))| metadata.is_empty())
            .map(|(&id, _)| id)
            .collect();
        // Only when the companion topic exists: the group's session does
        // not wait for a slow answer about a topic that is not there (the
        // assignment is not acknowledged while this callback runs).
        let mut stored = HashMap::new();
        let companion = settled::companion(&self.flow.topic);
        if !without.is_empty()
            && self
                .runtime
                .block_on(self.flow.producer.topics.exists(&companion))
                .unwrap_or(false)
        {
            let offsets = settled::committed(consumer, &self.flow.topic, &without, settled::WAIT);
            stored = settled::load(&self.config, &self.flow.topic, &offsets);
        }
        let mut partitions = self.partitions.change();
        for element in assigned.elements() {
            let id = element.partition();
            let skip = positions
                .get(&id)
                .map(|(offset, metadata)| {
                    let metadata = match stored.get(&id) {
                        Some(text) if metadata.is_empty() => text,
                        _ => metadata,
                    };
                    skipped_offsets(*offset, metadata)
                })
                .unwrap_or_default();
            tracing::debug!(
                topic = %self.flow.topic, group = %self.flow.group, partition = id,
                already_settled = skip.len(), "kafka partition assigned"
            );
            partitions.insert(id, Partition::new(self.flow.topic.clone(), id, skip));
        }
        self.reassigned.store(true, Ordering::Release);
    }

    /// Partitions taken away: stop handing them out, wait (bounded) for
    /// their deliveries to be settled unless the subscription is ending,
    /// then commit their final positions.
    fn revoke(&self, consumer: &BaseConsumer<Self>, ids: impl IntoIterator<Item = i32>) {
        let revoked: Vec<Arc<Partition>> = {
            let mut partitions = self.partitions.change();
            ids.into_iter()
                .filter_map(|id| partitions.remove(&id))
                .collect()
        };
        if revoked.is_empty() {
            return;
        }
        for partition in &revoked {
            partition.start_revoking();
        }
        tracing::debug!(
            topic = %self.flow.topic, group = %self.flow.group, partitions = revoked.len(),
            closing = self.flow.is_closing(), "kafka partitions revoked"
        );
        if !self.flow.is_closing() {
            let deadline = deadline_after(Instant::now(), self.config.revoke_timeout);
            for partition in &revoked {
                partition.wait_idle(deadline, || self.flow.is_closing());
            }
        }
        let mut commit = TopicPartitionList::new();
        let mut to_store = Vec::new();
        for partition in &revoked {
            let (position, still_out) = partition.revoke();
            if still_out > 0 {
                tracing::warn!(
                    topic = %self.flow.topic, partition = partition.id, still_out,
                    "partition revoked with deliveries unsettled; they will be delivered again"
                );
            }
            if let Some((offset, metadata)) = position {
                add(&mut commit, partition, offset, &metadata);
                if !metadata.is_empty() {
                    to_store.push((partition.id, metadata));
                }
            }
        }
        // Also keep the settled offsets where a broker that drops commit
        // metadata keeps them (see the `settled` module).
        if !to_store.is_empty() {
            let stored = self.runtime.block_on(settled::store(
                &self.flow.producer,
                &self.config,
                &self.flow.topic,
                to_store,
            ));
            let side = settled::companion(&self.flow.topic);
            for (id, next) in stored {
                let _ = commit.add_partition_offset(&side, id, Offset::Offset(next));
            }
        }
        self.commit_now(consumer, &commit, CommitMode::Sync);
        self.reassigned.store(true, Ordering::Release);
    }

    /// Commits the positions that changed since the last commit, and waits
    /// for the answer.
    ///
    /// Waiting keeps at most one commit on its way. The group coordinator
    /// answers a connection's requests in order, and the member's
    /// heartbeats share that connection with its commits: commits sent
    /// every interval without waiting piled up whenever the broker took
    /// longer than the interval per commit (the Kafka-protocol test broker
    /// took up to 3 s under load, against 100 ms), the heartbeats behind
    /// them went unanswered past the session timeout, and the client gave
    /// its partitions up to join the group again, a join that broker did not
    /// always complete (the subscription then stalled for good).
    fn commit_changed(&self, consumer: &BaseConsumer<Self>) {
        let force = self.commit_failed.swap(false, Ordering::AcqRel);
        let partitions: Vec<Arc<Partition>> = self.partitions.lock().values().cloned().collect();
        let mut commit = TopicPartitionList::new();
        for partition in &partitions {
            if let Some((offset, metadata)) = partition.take_commit(force) {
                add(&mut commit, partition, offset, &metadata);
            }
        }
        self.commit_now(consumer, &commit, CommitMode::Sync);
    }

    fn commit_now(
        &self,
        consumer: &BaseConsumer<Self>,
        list: &TopicPartitionList,
        mode: CommitMode,
    ) {
        if list.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(list, mode) {
            tracing::warn!(topic = %self.flow.topic, error = %e, "kafka commit failed");
            self.commit_failed_for(list);
        }
    }

    fn commit_failed_for(&self, list: &TopicPartitionList) {
        self.commit_failed.store(true, Ordering::Release);
        let partitions = self.partitions.lock();
        for element in list.elements() {
            if let Some(p) = partitions.get(&element.partition()) {
                p.mark_dirty();
            }
        }
    }

    /// Handles one fetched record: a record to hand out joins `batch`.
    fn fetched(
        &self,
        message: &BorrowedMessage<'_>,
        lookup: &mut Lookup,
        batch: &mut Vec<Pending>,
        runtime: &tokio::runtime::Handle,
    ) {
        let id = message.partition();
        let offset = message.offset();
        let Some(partition) = lookup.get(&self.partitions, id) else {
            return; // not (or no longer) ours: its owner fetches it
        };
        if partition.receive(offset) != Received::Deliver {
            return;
        }
        let partition = partition.clone();
        match decode(message, &self.flow.topic) {
            Ok(decoded) => {
                batch.push(Pending {
                    partition,
                    offset,
                    message: decoded,
                    deliveries: 0,
                });
            }
            Err(reason) => self.dead_letter_raw(message, partition, offset, reason, runtime),
        }
    }

    /// A record courier cannot represent (a key or header that is not
    /// UTF-8, say) goes to the dead-letter topic as it is, with the reason,
    /// instead of reaching handlers or being lost.
    fn dead_letter_raw(
        &self,
        message: &BorrowedMessage<'_>,
        partition: Arc<Partition>,
        offset: i64,
        reason: String,
        runtime: &tokio::runtime::Handle,
    ) {
        let topic = self.flow.topic.clone();
        let group = self.flow.group.clone();
        tracing::warn!(%topic, partition = partition.id, offset, %reason, "dead-lettering a record courier cannot represent");
        let key = message.key().map(<[u8]>::to_vec);
        let payload = message.payload().unwrap_or_default().to_vec();
        let timestamp = message.timestamp().to_millis();
        let id = crate::foreign::record_id(&topic, partition.id, offset);
        let mut headers = crate::foreign::dead_letter_headers(message.headers(), &id, timestamp);
        for (name, value) in [
            (DLQ_REASON, reason.as_str()),
            (DLQ_ORIGINAL_TOPIC, &topic),
            (DLQ_GROUP, &group),
        ] {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let producer = self.flow.producer.clone();
        let dead_letter = async move {
            let dlq = courier_core::delivery::default_dead_letter_topic(&topic);
            // The record stays unsettled (holding the partition's commit)
            // while the copy is refused, and the copy is sent again with the
            // dead-letter backoff until it is taken or the partition is
            // revoked (its next owner reads the record again).
            let mut delays = courier_core::adapter::dead_letter_retry_delays();
            for failures in 1_u32.. {
                let outcome = match producer.topics.ensure(&dlq).await {
                    Ok(_) => {
                        let record = Record {
                            key: key.as_deref(),
                            payload: &payload,
                            headers: headers.clone(),
                            timestamp,
                        };
                        producer.send_all(&dlq, std::iter::once(record)).await
                    }
                    Err(e) => Err(e),
                };
                let error = match outcome {
                    Ok(()) => {
                        let _ = partition.settle_unhanded(offset);
                        return;
                    }
                    Err(error) => error,
                };
                let delay = delays
                    .next()
                    .unwrap_or(courier_core::adapter::DEAD_LETTER_RETRY_MAX_DELAY);
                tracing::warn!(
                    %topic, offset, failures, ?delay, %error,
                    "cannot dead-letter an undecodable record yet; it stays unsettled and is sent again"
                );
                tokio::time::sleep(delay).await;
                if !partition.is_active() {
                    return;
                }
            }
        };
        let tasks = &self.flow.tasks;
        tasks.spawn_on("dead-letter an undecodable record", dead_letter, runtime);
    }
}

fn add(list: &mut TopicPartitionList, partition: &Partition, offset: i64, metadata: &str) {
    if list
        .add_partition_offset(&partition.topic, partition.id, Offset::Offset(offset))
        .is_ok()
        && !metadata.is_empty()
        && let Some(mut element) = list.find_partition(&partition.topic, partition.id)
    {
        element.set_metadata(metadata);
    }
}

impl ClientContext for SessionContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.base.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason);
    }
}

impl ConsumerContext for SessionContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                self.joined.store(false, Ordering::Release);
                let ids: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
                self.revoke(consumer, ids);
            }
            Rebalance::Assign(list) => {
                self.assign(consumer, list);
                self.joined.store(true, Ordering::Release);
            }
            Rebalance::Error(e) => {
                tracing::warn!(topic = %self.flow.topic, error = %e, "kafka rebalance error");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(topic = %self.flow.topic, error = %e, "kafka commit failed; retrying");
            self.commit_failed_for(offsets);
        }
    }
}

/// Headers of a record [`decode`] reads without allocating.
const INLINE_HEADERS: usize = 8;

/// Turns a record into a courier message. Records from other producers get
/// the id `<topic>-<partition>-<offset>` and the record's timestamp.
pub(crate) fn decode(
    message: &BorrowedMessage<'_>,
    topic: &str,
) -> Result<courier_core::Message, String> {
    let key = match message.key() {
        Some(key) => {
            Some(std::str::from_utf8(key).map_err(|_| "record key is not UTF-8".to_owned())?)
        }
        None => None,
    };
    // Read once (rdkafka looks each one up and checks its name), into
    // place on the stack for the usual few.
    let mut inline = [("", &[][..]); INLINE_HEADERS];
    let spilled: Vec<(&str, &[u8])>;
    let headers: &[(&str, &[u8])] = match message.headers() {
        None => &[],
        Some(headers) if headers.count() <= INLINE_HEADERS => {
            let pairs = headers.iter().map(|h| (h.key, h.value.unwrap_or_default()));
            let mut count = 0;
            for (slot, pair) in inline.iter_mut().zip(pairs) {
                *slot = pair;
                count += 1;
            }
            &inline[..count]
        }
        Some(headers) => {
            spilled = headers
                .iter()
                .map(|h| (h.key, h.value.unwrap_or_default()))
                .collect();
            &spilled
        }
    };
    let origin = Origin::of_wire_headers(headers.iter().map(|(name, _)| *name));
    // A reserved header is trusted exactly when the message is not foreign.
    let has_timestamp =
        origin != Origin::Foreign && headers.iter().any(|(name, _)| *name == wire::TIMESTAMP);
    let headers = origin::trusted(headers.iter().copied(), origin);
    let payload = Bytes::copy_from_slice(message.payload().unwrap_or_default());
    let (partition, offset) = (message.partition(), message.offset());
    let decoded = wire::decode(headers, payload, key, || {
        MessageId::parse(&crate::foreign::record_id(topic, partition, offset)).unwrap_or_default()
    })
    .map_err(|e| format!("record headers: {e}"))?;
    if has_timestamp {
        return Ok(decoded); // the record's own timestamp is not read then
    }
    Ok(match message.timestamp().to_millis() {
        Some(ms) if ms >= 0 => {
            decoded.with_timestamp(UNIX_EPOCH + Duration::from_millis(ms as u64))
        }
        _ => decoded,
    })
}

/// Starts the poll thread of a subscription.
pub(crate) fn start(
    consumer: BaseConsumer<SessionContext>,
    flow: Arc<Flow>,
    tx: mpsc::UnboundedSender<Fetched>,
    runtime: tokio::runtime::Handle,
) -> std::io::Result<()> {
    let name = format!("courier-kafka-{}", flow.topic);
    let thread_flow = flow.clone();
    let handle = std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || run(consumer, thread_flow, tx, runtime))?;
    flow.set_poller(handle.thread().clone());
    Ok(())
}

fn run(
    consumer: BaseConsumer<SessionContext>,
    flow: Arc<Flow>,
    tx: mpsc::UnboundedSender<Fetched>,
    runtime: tokio::runtime::Handle,
) {
    let context = consumer.context().clone();
    let commit_interval = context.config.commit_interval;
    let mut last_commit = Instant::now();
    let mut paused = false;
    let mut full_since: Option<Instant> = None;
    let mut lookup = Lookup::default();
    let mut capacity = BATCH_CAPACITY;
    while !flow.is_ending() && !tx.is_closed() {
        if last_commit.elapsed() >= commit_interval {
            context.commit_changed(&consumer);
            last_commit = Instant::now();
        }
        if context.reassigned.swap(false, Ordering::AcqRel) && paused {
            // librdkafka keeps a partition the application paused paused
            // across a rebalance that gives it back (it clears only its
            // own pauses): without a resume here, a partition reassigned
            // while fetching was paused would never be fetched again. An
            // empty assignment (revoked, the new one not yet given) stays
            // marked paused, so the assignment that follows is resumed.
            paused = !set_paused(&consumer, &flow, false);
        }
        if flow.buffered() >= flow.high_water() {
            // Stop polling while the stream catches up; rdkafka keeps what it
            // fetched meanwhile. Pausing would drop rdkafka's fetched records
            // (they are fetched again on resume), so only an application
            // that stops taking records for long gets paused, which keeps
            // rebalances served while it is stuck.
            let since = *full_since.get_or_insert_with(Instant::now);
            if !paused {
                if since.elapsed() < PAUSE_AFTER {
                    std::thread::park_timeout(FULL_WAIT);
                    continue;
                }
                paused = set_paused(&consumer, &flow, true);
            }
        } else {
            full_since = None;
            if paused && flow.buffered() <= flow.low_water() {
                paused = !set_paused(&consumer, &flow, false);
            }
        }
        // Sized like the last batch: growing it record by record cost more
        // than anything the thread did per record but decoding.
        let mut batch = Vec::with_capacity(capacity);
        let failed = poll_records(
            &consumer,
            &context,
            &flow,
            &runtime,
            &mut lookup,
            &mut batch,
        );
        capacity = batch.len().clamp(BATCH_CAPACITY, flow.high_water());
        if !batch.is_empty() {
            flow.add_buffered(batch.len());
            let _ = tx.send(Fetched::Records(batch));
        }
        if let Some(error) = failed {
            let _ = tx.send(Fetched::Failed(error));
            break;
        }
    }
    flow.end();
    finish_joining(&consumer, &context);
    // Final commit, once the deliveries still out are settled (unless the
    // connection is closing): a dropped stream lets in-flight work finish.
    let ids: Vec<i32> = context.partitions.lock().keys().copied().collect();
    context.revoke(&consumer, ids);
    // Dropping the consumer leaves the group.
    drop(consumer);
    flow.set_finished();
    tracing::debug!(topic = %flow.topic, group = %flow.group, "kafka subscription ended");
}

/// Polls once, waiting up to [`POLL_WAIT`], then takes without waiting
/// what rdkafka already fetched, until its queue is empty or the stream's
/// buffer reaches its high water. The records to hand out join `batch`,
/// which the caller sends the stream at once: one hand-over (one wake-up
/// of the stream's task) per batch instead of per record, which cost more
/// than everything else the thread does per record. Returns the error that
/// ends the subscription, if one came.
fn poll_records(
    consumer: &BaseConsumer<SessionContext>,
    context: &SessionContext,
    flow: &Flow,
    runtime: &tokio::runtime::Handle,
    lookup: &mut Lookup,
    batch: &mut Vec<Pending>,
) -> Option<courier_core::Error> {
    let mut wait = POLL_WAIT;
    loop {
        match consumer.poll(wait)? {
            Ok(message) => context.fetched(&message, lookup, batch, runtime),
            Err(KafkaError::PartitionEOF(_)) => {}
            Err(KafkaError::MessageConsumptionFatal(code)) => {
                return Some(courier_core::Error::broker(
                    BROKER,
                    "consume",
                    courier_core::BrokerErrorKind::Rejected,
                    KafkaError::MessageConsumptionFatal(code),
                ));
            }
            Err(e) => {
                // Broker outages and the like: rdkafka recovers by itself.
                tracing::debug!(topic = %flow.topic, error = %e, "kafka consumer error");
            }
        }
        // The batch counts as buffered once sent.
        if flow.buffered() + batch.len() >= flow.high_water() || flow.is_ending() {
            return None;
        }
        wait = Duration::ZERO;
    }
}

/// Lets a join of the group that is under way complete before the member
/// leaves (bounded by [`JOIN_WAIT`]). Some brokers (tansu) do not recover
/// when the member they chose as the group's leader leaves in the middle of
/// a join: the group then waits for an assignment that never comes. Records
/// fetched meanwhile are not handed out (their offsets stay uncommitted).
fn finish_joining(consumer: &BaseConsumer<SessionContext>, context: &SessionContext) {
    let started = Instant::now();
    loop {
        // Serve rebalance events already queued (a revocation starts a join).
        let _ = consumer.poll(POLL_WAIT);
        let elapsed = started.elapsed();
        let joined = context.joined.load(Ordering::Acquire);
        if (joined && elapsed >= JOIN_SETTLE) || elapsed >= JOIN_WAIT {
            break;
        }
    }
}

/// Pauses or resumes fetching of the whole assignment; returns whether it
/// did (an empty assignment, or a failure, does nothing).
fn set_paused(consumer: &BaseConsumer<SessionContext>, flow: &Flow, pause: bool) -> bool {
    let assignment = match consumer.assignment() {
        Ok(assignment) if assignment.count() > 0 => assignment,
        _ => return false,
    };
    let outcome = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match outcome {
        Ok(()) => {
            let partitions = assignment.count();
            let (topic, group) = (&flow.topic, &flow.group);
            if pause {
                tracing::debug!(%topic, %group, partitions, "kafka fetching paused");
            } else {
                tracing::debug!(%topic, %group, partitions, "kafka fetching resumed");
            }
            true
        }
        Err(e) => {
            tracing::debug!(topic = %flow.topic, error = %e, pause, "kafka pause/resume failed");
            false
        }
    }
}
