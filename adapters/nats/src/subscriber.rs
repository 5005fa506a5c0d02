//! Durable pull consumers and the pull loop that feeds a delivery stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use courier_core::adapter::backoff::Backoff;
use courier_core::{
    BrokerErrorKind, DeliveryStream, Error, MessageId, Result, StartPosition, Subscription, adapter,
};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};

use crate::config::{consumer_name, stream_name};
use crate::connection::Inner;
use crate::delivery::{NatsAcker, Origin, Pulled};
use crate::error::{BROKER, NatsError, op_error};
use crate::flow::Flow;

/// The group's durable consumer, created if missing.
pub(crate) async fn provision(
    inner: &Inner,
    subscription: &Subscription,
) -> Result<consumer::Consumer<pull::Config>> {
    subscription.validate()?;
    inner.check_open()?;
    let topic = subscription.topic();
    inner.ensure_stream(topic).await?;
    let stream = inner
        .js
        .get_stream(stream_name(topic))
        .await
        .map_err(|e| op_error("get stream", e))?;
    let durable = consumer_name(subscription.group());
    let description = format!("courier group {}", subscription.group());
    let config = pull::Config {
        durable_name: Some(durable.clone()),
        description: Some(description.clone()),
        deliver_policy: match subscription.start_position() {
            StartPosition::Earliest => DeliverPolicy::All,
            _ => DeliverPolicy::New,
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: inner.config.ack_wait,
        max_deliver: inner.config.max_deliver.map_or(-1, i64::from),
        max_ack_pending: i64::from(inner.config.max_ack_pending),
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(&durable, config)
        .await
        .map_err(|e| op_error("create consumer", e))?;
    // Consumer names cannot hold `.`: groups `a.b` and `a_b` share a name.
    // The description says which group a consumer was created for.
    let found = consumer.cached_info().config.description.clone();
    if found.as_deref() != Some(description.as_str()) {
        return Err(Error::broker(
            BROKER,
            "create consumer",
            BrokerErrorKind::Conflict,
            NatsError::ConsumerConflict {
                stream: stream_name(topic),
                consumer: durable,
                found: found.unwrap_or_default(),
                group: subscription.group().to_owned(),
            },
        ));
    }
    Ok(consumer)
}

/// Starts the pull loop and returns the stream it feeds.
pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    subscription: Subscription,
) -> Result<DeliveryStream> {
    let consumer = provision(&inner, &subscription).await?;
    let prefetch = usize::from(subscription.prefetch_count());
    let (tx, rx) = mpsc::channel(prefetch);
    let flow = Arc::new(Flow {
        in_flight: AtomicUsize::new(0),
        room: Notify::new(),
    });
    let requests = crate::request::listen(&inner, &subscription).await?;
    let topic: Arc<str> = Arc::from(subscription.topic());
    let tracker = inner.pull_loops.clone();
    tracker.spawn(pull_loop(
        inner.clone(),
        subscription,
        consumer,
        prefetch,
        flow.clone(),
        tx,
    ));
    Ok(crate::request::merge(inner, topic, rx, flow, requests))
}

/// The first nominal pause after a failed pull (jittered, doubling).
const PULL_RETRY_MIN_DELAY: Duration = Duration::from_millis(50);
/// How long after its expiry a pull request may still bring messages or
/// its end (the server's timeout status) on their way.
const PULL_END_MARGIN: Duration = Duration::from_millis(500);
/// The longest pause between failed pulls.
const PULL_RETRY_MAX_DELAY: Duration = Duration::from_secs(2);

/// Pulls at most `prefetch - in_flight` messages at a time and hands them
/// out, until the connection closes or the stream is dropped. Errors (a
/// server restart, say) are retried with a growing pause; the durable
/// consumer is re-provisioned in case the server lost it.
/// The pauses are [`Backoff`]'s, so that the consumers of a restarted
/// server do not pull again in lockstep.
async fn pull_loop(
    inner: Arc<Inner>,
    subscription: Subscription,
    mut consumer: consumer::Consumer<pull::Config>,
    prefetch: usize,
    flow: Arc<Flow>,
    tx: mpsc::Sender<Result<Pulled>>,
) {
    let topic: Arc<str> = Arc::from(subscription.topic());
    let backoff = Backoff::new(PULL_RETRY_MIN_DELAY, PULL_RETRY_MAX_DELAY);
    let mut pauses = backoff.delays();
    let refill = refill_at(prefetch);
    let mut origin = Origin::read(&inner);
    loop {
        let free = prefetch.saturating_sub(flow.in_flight.load(Ordering::Acquire));
        // Messages pulled and not yet taken from the stream.
        let buffered = tx.max_capacity() - tx.capacity();
        if free == 0 || (free < refill && buffered > 0) {
            tokio::select! {
                () = flow.room.notified() => continue,
                () = inner.shutdown.cancelled() => return,
                () = tx.closed() => return,
            }
        }
        let pull_ends = tokio::time::Instant::now() + inner.config.pull_expiry + PULL_END_MARGIN;
        // Read before the pull is sent (see `Origin`).
        origin.refresh(&inner);
        let batch = consumer
            .batch()
            .max_messages(free)
            .expires(inner.config.pull_expiry)
            .messages();
        let mut batch = tokio::select! {
            batch = batch => batch,
            () = inner.shutdown.cancelled() => return,
            () = tx.closed() => return,
        };
        let mut failed = false;
        // Messages this pull brought.
        let mut brought = 0_usize;
        match batch.as_mut() {
            Ok(messages) => loop {
                let next = tokio::select! {
                    next = messages.next() => next,
                    () = inner.shutdown.cancelled() => return drain(&inner, messages, pull_ends).await,
                    () = tx.closed() => return drain(&inner, messages, pull_ends).await,
                };
                match next {
                    None => {
                        // An empty pull that ended in time is the idle
                        // case, once per expiry: not worth a line.
                        let late = tokio::time::Instant::now() > pull_ends;
                        if brought > 0 || late {
                            tracing::debug!(
                                topic = %topic,
                                asked = free,
                                brought,
                                late,
                                in_flight = flow.in_flight.load(Ordering::Acquire),
                                "nats pull ended"
                            );
                        }
                        break;
                    }
                    Some(Ok(message)) => {
                        brought += 1;
                        pauses = backoff.delays();
                        let Some(pulled) =
                            to_pulled(&inner, &topic, &subscription, &flow, message, &origin)
                        else {
                            continue;
                        };
                        let sent = tokio::select! {
                            sent = tx.send(Ok(pulled)) => sent.is_ok(),
                            () = inner.shutdown.cancelled() => false,
                        };
                        if !sent {
                            // The delivery dropped unsent is NAKed.
                            return drain(&inner, messages, pull_ends).await;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(topic = %topic, error = %e, "nats pull interrupted");
                        failed = true;
                        break;
                    }
                }
            },
            Err(e) => {
                tracing::debug!(topic = %topic, error = %e, "nats pull request failed");
                failed = true;
            }
        }
        if failed {
            tokio::select! {
                () = tokio::time::sleep(pauses.next().unwrap_or(PULL_RETRY_MAX_DELAY)) => {}
                () = inner.shutdown.cancelled() => return,
            }
            let provisioned = tokio::select! {
                provisioned = provision(&inner, &subscription) => provisioned,
                () = inner.shutdown.cancelled() => return,
                () = tx.closed() => return,
            };
            if let Ok(c) = provisioned {
                consumer = c;
            }
        }
    }
}

/// How much room the prefetch must have before the next pull while
/// pulled messages still wait in the stream: half of it (at least one
/// message). Pulling as soon as one delivery was settled made a consumer
/// with a backlog pull one message per settlement, a pull request and its
/// end for every message on top of the message and its ack; async-nats's
/// own pull stream refills at half its batch too. Once the stream holds
/// nothing, any room is pulled at once: handlers that hold most of the
/// prefetch (a concurrency as large as the prefetch, slow handlers) get
/// the next message as soon as one of them settles.
fn refill_at(prefetch: usize) -> usize {
    (prefetch / 2).max(1)
}

/// Keeps the pending pull request open until it expires, NAKing whatever
/// it still brings. Abandoning the request instead (unsubscribing its inbox)
/// makes nats-server 2.9 rewind the consumer when it next delivers to it,
/// which can make already acknowledged messages pending again.
///
/// A pull whose end has not come by `pull_ends` (its expiry plus a margin)
/// is given up at once when the server still answers: a server that
/// restarted meanwhile forgot the request and never sends its end (the
/// client's own fallback comes 5 s after the expiry, longer than close
/// waits). A server that does not answer may still deliver into it, so the
/// wait goes on until the client's fallback ends the pull, and close
/// reports the pull loop as unfinished.
async fn drain(inner: &Inner, messages: &mut pull::Batch, pull_ends: tokio::time::Instant) {
    let mut naked = std::pin::pin!(async {
        while let Some(next) = messages.next().await {
            match next {
                Ok(message) => {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
                Err(_) => return,
            }
        }
    });
    if tokio::time::timeout_at(pull_ends, naked.as_mut())
        .await
        .is_ok()
    {
        return;
    }
    if server_answers(inner).await {
        tracing::debug!("nats pull request forgotten by the server; not waited for further");
        return;
    }
    naked.await;
}

/// Whether the server answers a round trip within the request timeout.
async fn server_answers(inner: &Inner) -> bool {
    let probe = inner.round_trip();
    matches!(
        tokio::time::timeout(inner.config.request_timeout, probe).await,
        Ok(Ok(()))
    )
}

fn to_pulled(
    inner: &Arc<Inner>,
    topic: &Arc<str>,
    subscription: &Subscription,
    flow: &Arc<Flow>,
    message: async_nats::jetstream::Message,
    origin: &Origin,
) -> Option<Pulled> {
    let info = message
        .info()
        .ok()
        .map(|i| (i.delivered, i.stream_sequence));
    let Some(reply) = message.reply.clone() else {
        tracing::warn!(topic = %topic, "JetStream message without reply subject skipped");
        return None;
    };
    let token = inner.next_token.fetch_add(1, Ordering::Relaxed);
    inner.outstanding.lock().insert(token, reply.clone());
    flow.in_flight.fetch_add(1, Ordering::AcqRel);
    let acker = NatsAcker {
        inner: inner.clone(),
        flow: flow.clone(),
        reply,
        token,
        topic: topic.clone(),
        group: Arc::from(subscription.group()),
    };
    let sequence = info.map_or(0, |(_, seq)| seq);
    let headers = crate::codec::wire_headers(message.headers.as_ref());
    let decoded = adapter::wire::decode(headers, message.payload.clone(), None, || {
        MessageId::parse(&format!("{topic}-{sequence}")).unwrap_or_default()
    });
    match decoded {
        Ok(msg) => {
            let count = info.map(|(delivered, _)| delivered.max(1) as u32);
            Some(Pulled::new(msg, acker, count, origin.clone()))
        }
        Err(e) => {
            // Not a message courier can represent (a header that is not
            // UTF-8, say): it goes to the dead-letter topic with the reason,
            // payload and id kept, instead of reaching handlers or being
            // lost. A copy the dead-letter topic refuses is tried again at
            // the message's next delivery, which the server delays by the
            // dead-letter backoff: no loop.
            let id = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(crate::codec::NATS_MSG_ID))
                .and_then(|id| MessageId::parse(id.as_str()).ok())
                .unwrap_or_else(|| {
                    MessageId::parse(&format!("{topic}-{sequence}")).unwrap_or_default()
                });
            let raw = courier_core::Message::new(message.payload.clone()).with_id(id);
            let failures = info.map_or(1, |(delivered, _)| delivered.max(1) as u32);
            let reason = format!("undecodable NATS headers: {e}");
            tracing::warn!(topic = %topic, %reason, "dead-lettering a foreign message");
            let dead_letter = acker.dead_letter_foreign(raw, reason, failures);
            inner
                .tasks
                .spawn("dead-letter a foreign message", dead_letter);
            None
        }
    }
}
