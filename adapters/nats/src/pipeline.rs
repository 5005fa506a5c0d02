//! The pull loop of a subscription: pull requests pipelined over one inbox.
//!
//! The loop keeps pull requests outstanding for whatever room the
//! subscription's prefetch leaves (`prefetch - in flight - requested`), so
//! the next messages are on their way while the current ones are handled
//! and settled, instead of one pull round trip per settled message. All
//! requests answer to one inbox subscription, so messages arrive in the
//! order the server sent them (stream order), whichever request each fills.
//!
//! Accounting: every request asks for `n` messages and expires after
//! `pull_expiry`; each message delivered takes one off the count still
//! requested, and a request that expires or is ended by the server (status
//! 408 or 409) gives back the number it did not fill
//! (`Nats-Pending-Messages`). Requests lost with a connection (a server
//! restart) are written off when the client reconnects, or at the latest
//! when the last request should have expired.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer;
use async_nats::jetstream::consumer::pull::{self, BatchConfig};
use async_nats::{StatusCode, Subject};
use courier_core::{Delivery, Result, Subscription};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::connection::Inner;
use crate::error::op_error;
use crate::flow::Flow;

/// How long after a request's expiry its end (messages or a 408) may still
/// arrive before the request counts as lost.
const GRACE: Duration = Duration::from_millis(500);

/// Header of a 408/409 status: how many messages the ended request did not
/// deliver.
const PENDING_MESSAGES: &str = "Nats-Pending-Messages";

/// Why a pull session ended.
enum Ended {
    /// The connection closes or the delivery stream was dropped: stop.
    Stopped,
    /// The server refused or the subscription ended: pause, provision
    /// again, start over.
    Failed,
}

/// Pulls for one subscription and hands out its deliveries, until the
/// connection closes or the stream is dropped. Failures (a server restart,
/// a deleted consumer) are retried with a growing pause; the durable
/// consumer is provisioned again in case the server lost it.
pub(crate) async fn pull_loop(
    inner: Arc<Inner>,
    subscription: Subscription,
    mut consumer: consumer::Consumer<pull::Config>,
    prefetch: usize,
    flow: Arc<Flow>,
    tx: mpsc::Sender<Result<Delivery>>,
) {
    let topic: Arc<str> = Arc::from(subscription.topic());
    let group: Arc<str> = Arc::from(subscription.group());
    let mut pause = Duration::from_millis(50);
    loop {
        let session = Session::open(&inner, &consumer, prefetch).await;
        let ended = match session {
            Ok(mut session) => {
                let ended = session.run(&topic, &group, &flow, &tx, &mut pause).await;
                if let Ended::Stopped = ended {
                    session.drain().await;
                }
                ended
            }
            Err(e) => {
                tracing::debug!(topic = %topic, error = %e, "nats pull subscription failed");
                Ended::Failed
            }
        };
        if let Ended::Stopped = ended {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = inner.shutdown.cancelled() => return,
            () = tx.closed() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(2));
        if let Ok(c) = crate::subscriber::provision(&inner, &subscription).await {
            consumer = c;
        }
    }
}

/// Pull requests answering to one inbox subscription.
struct Session<'a> {
    inner: &'a Arc<Inner>,
    consumer: &'a consumer::Consumer<pull::Config>,
    inbox: Subject,
    messages: async_nats::Subscriber,
    prefetch: usize,
    /// Messages asked for and neither delivered nor given back.
    requested: usize,
    /// When the last request is to have ended, delivered or expired.
    settled_by: Option<Instant>,
    /// The client's connection count when the requests were sent.
    connects: u64,
}

impl<'a> Session<'a> {
    async fn open(
        inner: &'a Arc<Inner>,
        consumer: &'a consumer::Consumer<pull::Config>,
        prefetch: usize,
    ) -> Result<Session<'a>> {
        let inbox = Subject::from(inner.client.new_inbox());
        let messages = inner
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| op_error("subscribe to pulled messages", e))?;
        Ok(Session {
            inner,
            consumer,
            inbox,
            messages,
            prefetch,
            requested: 0,
            settled_by: None,
            connects: connects(inner),
        })
    }

    /// The least a new request asks for: a quarter of the prefetch, so a
    /// busy subscription keeps a few requests in flight rather than one
    /// per settled message.
    fn least_request(&self) -> usize {
        (self.prefetch / 4).max(1)
    }

    /// Asks for what the prefetch leaves room for, if that is enough.
    async fn top_up(&mut self, flow: &Flow) -> std::result::Result<(), Ended> {
        let in_flight = flow.in_flight.load(Ordering::Acquire);
        let room = self
            .prefetch
            .saturating_sub(in_flight)
            .saturating_sub(self.requested);
        if room == 0 || (room < self.least_request() && self.requested + in_flight > 0) {
            return Ok(());
        }
        let expiry = self.inner.config.pull_expiry;
        let request = BatchConfig {
            batch: room,
            expires: Some(expiry),
            ..Default::default()
        };
        if let Err(e) = self
            .consumer
            .request_batch(request, self.inbox.clone())
            .await
        {
            tracing::debug!(error = %e, "nats pull request failed");
            return Err(Ended::Failed);
        }
        self.requested += room;
        self.settled_by = Some(Instant::now() + expiry + GRACE);
        Ok(())
    }

    /// Writes off requests that can no longer be answered: sent before a
    /// reconnect, or past the time the last one was to have ended.
    fn forget_lost_requests(&mut self) {
        let now = connects(self.inner);
        let reconnected = now != self.connects;
        let overdue = self.settled_by.is_some_and(|at| Instant::now() >= at);
        if reconnected || overdue {
            self.requested = 0;
            self.settled_by = None;
            self.connects = now;
        }
    }

    async fn run(
        &mut self,
        topic: &Arc<str>,
        group: &Arc<str>,
        flow: &Arc<Flow>,
        tx: &mpsc::Sender<Result<Delivery>>,
        pause: &mut Duration,
    ) -> Ended {
        let inner = self.inner;
        loop {
            self.forget_lost_requests();
            if let Err(ended) = self.top_up(flow).await {
                return ended;
            }
            let overdue = self.settled_by;
            let next = tokio::select! {
                biased;
                () = inner.shutdown.cancelled() => return Ended::Stopped,
                () = tx.closed() => return Ended::Stopped,
                next = self.messages.next() => next,
                () = flow.settled.notified() => continue,
                () = sleep_until(overdue) => continue,
            };
            let Some(message) = next else {
                tracing::debug!(topic = %topic, "nats pull subscription ended");
                return Ended::Failed;
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    *pause = Duration::from_millis(50);
                    self.requested = self.requested.saturating_sub(1);
                    let message = async_nats::jetstream::Message {
                        message,
                        context: inner.js.clone(),
                    };
                    let Some(delivery) =
                        crate::subscriber::to_delivery(inner, topic, group, flow, message)
                    else {
                        continue;
                    };
                    if tx.send(Ok(delivery)).await.is_err() {
                        // The delivery dropped with the error is NAKed.
                        return Ended::Stopped;
                    }
                }
                Some(StatusCode::IDLE_HEARTBEAT) | Some(StatusCode::NOT_FOUND) => {}
                Some(status @ (StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED)) => {
                    match pending_messages(&message) {
                        Some(unfilled) => {
                            self.requested = self.requested.saturating_sub(unfilled);
                        }
                        None if status == StatusCode::TIMEOUT => self.requested = 0,
                        None => {
                            tracing::debug!(
                                topic = %topic,
                                description = ?message.description,
                                "nats pull request refused"
                            );
                            return Ended::Failed;
                        }
                    }
                }
                Some(status) => {
                    tracing::debug!(
                        topic = %topic,
                        %status,
                        description = ?message.description,
                        "nats pull interrupted"
                    );
                    return Ended::Failed;
                }
            }
        }
    }

    /// Keeps the inbox until the outstanding requests have ended, NAKing
    /// whatever they still bring. Abandoning them instead (unsubscribing
    /// the inbox) makes nats-server 2.9 rewind the consumer when it next
    /// delivers to them, which can make already acknowledged messages
    /// pending again.
    async fn drain(&mut self) {
        while self.requested > 0 {
            let Some(by) = self.settled_by else { return };
            let next = tokio::select! {
                next = self.messages.next() => next,
                () = tokio::time::sleep_until(by) => return,
            };
            let Some(message) = next else { return };
            match message.status {
                None | Some(StatusCode::OK) => {
                    self.requested -= 1;
                    if let Some(reply) = message.reply {
                        let _ = self
                            .inner
                            .client
                            .publish(reply, bytes::Bytes::from_static(b"-NAK"))
                            .await;
                    }
                }
                Some(StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED) => {
                    let unfilled = pending_messages(&message).unwrap_or(self.requested);
                    self.requested = self.requested.saturating_sub(unfilled);
                }
                Some(_) => {}
            }
        }
    }
}

/// What an ended request did not deliver, as its status message says.
fn pending_messages(message: &async_nats::Message) -> Option<usize> {
    message
        .headers
        .as_ref()?
        .get(PENDING_MESSAGES)?
        .as_str()
        .parse()
        .ok()
}

fn connects(inner: &Inner) -> u64 {
    inner.client.statistics().connects.load(Ordering::Relaxed)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
