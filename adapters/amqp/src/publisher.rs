//! Publishing with publisher confirms, across reconnects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::adapter::instrumented_publish;
use courier_core::{
    BrokerErrorKind, Close, Error, Message, Publisher, Result, UnroutablePolicy, async_trait,
};
use lapin::Confirmation;
use lapin::types::ShortString;

use crate::codec;
use crate::config::AmqpConfig;
use crate::connection::{Link, Session, Watch, connection_lost};
use crate::error::{self, AmqpError, broker};
use crate::topology;

/// Where messages go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route<'a> {
    /// A topic's exchange (declared once per connection).
    Exchange(&'a str),
    /// A retry queue, through the default exchange. It is declared before
    /// every use, which also keeps it from expiring.
    RetryQueue {
        queue: &'a str,
        bucket_ms: u64,
        target: &'a str,
    },
}

enum Failure {
    /// The connection is gone: reconnect and publish the rest again.
    Connection(lapin::Error),
    /// The publishing channel was closed under the message: publish the
    /// rest again on a new channel, a few times.
    Channel(Error),
    /// The broker refused the message with `basic.nack`: try again after a pause.
    Nacked,
    /// Trying again would not help.
    Fatal(Error),
}

struct Failed {
    /// How many messages from the start were confirmed.
    confirmed: usize,
    failure: Failure,
}

/// How long before the publish's deadline its confirm wait gives up:
/// two ticks of the [`Watch`] that checks it.
const EARLY: Duration = Duration::from_millis(200);

/// How often a publish is tried again after its channel closed under it.
const CHANNEL_RETRIES: u32 = 3;

/// Publishes `messages` (checked with [`codec::check`]) in order and waits
/// for every confirm. `prior_deliveries` marks copies sent through a retry
/// queue.
///
/// Messages not confirmed when the connection or channel failed are
/// published again once it is back (at least once, never silently dropped):
/// from the first unconfirmed one on, so order is kept. The whole of it,
/// waiting for a reconnect included, is bounded by
/// [`AmqpConfig::confirm_timeout`] (`publish_timeout`): past it the
/// publish fails with [`Error::Timeout`], whatever the connection is doing.
pub(crate) async fn send(
    link: &Link,
    route: Route<'_>,
    mandatory: bool,
    messages: &[Message],
    prior_deliveries: Option<u32>,
) -> Result<()> {
    let bound = link.config().confirm_timeout;
    let deadline = courier_core::resilience::deadline_after(Instant::now(), bound);
    let sending = send_by(deadline, link, route, mandatory, messages, prior_deliveries);
    courier_core::error::within("publish", bound, sending).await
}

/// [`send`], giving up on confirms just before `deadline` so that it
/// replaces a publishing channel whose confirms stopped before the bound
/// around it drops it (a channel left wedged would hold every later
/// confirm).
async fn send_by(
    deadline: Instant,
    link: &Link,
    route: Route<'_>,
    mandatory: bool,
    messages: &[Message],
    prior_deliveries: Option<u32>,
) -> Result<()> {
    let config = link.config().clone();
    let (exchange, routing_key) = match route {
        Route::Exchange(exchange) => (short(exchange), ShortString::from("")),
        Route::RetryQueue { queue, .. } => (ShortString::from(""), short(queue)),
    };
    let started = Instant::now();
    let mut next = 0;
    let mut retries = 0u32;
    loop {
        let session = link.session().await?;
        let target = Target {
            route,
            exchange: &exchange,
            routing_key: &routing_key,
            mandatory,
            prior_deliveries,
        };
        let Err(failed) = attempt(&session, &config, deadline, target, &messages[next..]).await
        else {
            return Ok(());
        };
        next += failed.confirmed;
        if link.is_closed() {
            return Err(Error::Closed(link.role()));
        }
        let give_up = started.elapsed() >= config.reconnect.give_up_after;
        match failed.failure {
            Failure::Connection(e) => {
                tracing::debug!(error = %e, unconfirmed = messages.len() - next, "publish interrupted by a lost connection; publishing again");
                link.broken(&session);
                if give_up {
                    return Err(error::from_lapin("publish", e));
                }
            }
            Failure::Channel(e) => {
                session.forget_exchanges();
                retries += 1;
                if retries > CHANNEL_RETRIES || give_up {
                    return Err(e);
                }
            }
            Failure::Nacked => {
                retries += 1;
                if give_up {
                    return Err(broker(
                        "publish",
                        BrokerErrorKind::Rejected,
                        AmqpError::Nacked,
                    ));
                }
                tokio::select! {
                    () = tokio::time::sleep(config.reconnect.delay(retries)) => {}
                    () = link.closed().cancelled() => return Err(Error::Closed(link.role())),
                }
            }
            Failure::Fatal(e) => return Err(e),
        }
    }
}

#[derive(Clone, Copy)]
struct Target<'a> {
    route: Route<'a>,
    exchange: &'a ShortString,
    routing_key: &'a ShortString,
    mandatory: bool,
    prior_deliveries: Option<u32>,
}

async fn attempt(
    session: &Session,
    config: &AmqpConfig,
    deadline: Instant,
    target: Target<'_>,
    messages: &[Message],
) -> Result<(), Failed> {
    let failed = |confirmed, failure| Failed { confirmed, failure };
    let classify = |e: lapin::Error| {
        if session.failed(&e) {
            Failure::Connection(e)
        } else {
            Failure::Channel(error::from_lapin("publish", e))
        }
    };
    let prepared = match target.route {
        Route::Exchange(exchange) => session.ensure_exchange(exchange).await,
        Route::RetryQueue {
            queue,
            bucket_ms,
            target,
        } => {
            session
                .declare(|channel| async move {
                    topology::declare_retry_queue(&channel, queue, bucket_ms, target).await
                })
                .await
        }
    };
    if let Err(e) = prepared {
        let failure = if session.failed(&e) {
            Failure::Connection(e)
        } else {
            Failure::Fatal(error::from_lapin("declare", e))
        };
        return Err(failed(0, failure));
    }
    // Bounded: a channel given up on is replaced, and a broker that
    // stopped answering never opens the new one.
    let after = config.confirm_timeout;
    let channel = match tokio::time::timeout(after, session.publish_channel()).await {
        Ok(opened) => opened.map_err(|e| failed(0, classify(e)))?,
        Err(_) => {
            let operation = "publisher confirm";
            return Err(failed(
                0,
                Failure::Fatal(Error::Timeout { operation, after }),
            ));
        }
    };
    let alive = || session.is_alive() && channel.status().connected();
    let lost = || {
        if session.is_alive() {
            Failure::Channel(broker(
                "publish",
                BrokerErrorKind::Unavailable,
                "the publishing channel closed before the broker confirmed",
            ))
        } else {
            Failure::Connection(connection_lost())
        }
    };
    // One watch for the whole batch: a timer per message would cost more
    // than the publish.
    let mut watch = Watch::new();
    let mut confirms = Vec::with_capacity(messages.len());
    let mut publish_failure = None;
    for message in messages {
        // Encoded for each attempt: cheaper than keeping a copy to clone.
        let properties = match codec::encode(message, target.prior_deliveries) {
            Ok(properties) => properties,
            Err(e) => {
                publish_failure = Some(Failure::Fatal(e));
                break;
            }
        };
        let publishing = session.basic_publish(
            &channel,
            target.exchange,
            target.routing_key,
            target.mandatory,
            message.payload(),
            properties,
        );
        match watch.wait(publishing, alive).await {
            Some(Ok(confirm)) => confirms.push(confirm),
            Some(Err(e)) => {
                publish_failure = Some(classify(e));
                break;
            }
            None => {
                publish_failure = Some(lost());
                break;
            }
        }
    }
    let published = confirms.len();
    let timeout = config.confirm_timeout;
    // Give up when no confirm came for `timeout`.
    // The bound around the whole publish would drop this wait (and leave the
    // channel wedged) a tick after `deadline`: give up a little before.
    let give_up =
        |stalled: Duration| !alive() || stalled > timeout || Instant::now() + EARLY >= deadline;
    // The first message the broker returned (index and failure): the rest
    // of the batch is already sent, so its confirms are awaited too (none
    // is left pending in the client) and nothing is published again.
    let mut returned = None;
    for (i, confirm) in confirms.into_iter().enumerate() {
        let confirmed = watch.wait_until(confirm, give_up).await;
        let failure = match confirmed {
            None if !alive() => lost(),
            None => {
                session.give_up_publish_channel(&channel);
                Failure::Fatal(Error::Timeout {
                    operation: "publisher confirm",
                    after: timeout,
                })
            }
            Some(Ok(Confirmation::Ack(None))) => continue,
            // Returned (`basic.return` before the ack): it reached no
            // queue, so it is not confirmed.
            Some(Ok(Confirmation::Ack(Some(message)))) => {
                let failure = Failure::Fatal(broker(
                    "publish",
                    BrokerErrorKind::Unroutable,
                    AmqpError::Unroutable {
                        exchange: message.delivery.exchange.to_string(),
                        reply: message.reply_text.to_string(),
                    },
                ));
                returned.get_or_insert((i, failure));
                continue;
            }
            Some(Ok(Confirmation::Nack(_))) => Failure::Nacked,
            Some(Ok(Confirmation::NotRequested)) => Failure::Fatal(broker(
                "publish",
                BrokerErrorKind::Other,
                "the channel is not in confirm mode",
            )),
            Some(Err(e)) => classify(e),
        };
        let (i, failure) = returned.unwrap_or((i, failure));
        return Err(failed(i, failure));
    }
    if let Some((i, failure)) = returned {
        return Err(failed(i, failure));
    }
    match publish_failure {
        Some(failure) => Err(failed(published, failure)),
        None => Ok(()),
    }
}

fn short(name: &str) -> ShortString {
    ShortString::try_new(name).unwrap_or_else(|_| ShortString::from(""))
}

/// Publishes to RabbitMQ with publisher confirms.
///
/// Each topic is a durable fanout exchange, declared on the first publish
/// to it over a connection (once, however many publishes race for it).
/// `publish` returns once the broker confirmed the message (it is then
/// stored in every queue bound to the exchange: one per consumer group).
/// A publish to a topic without groups fails with
/// [`BrokerErrorKind::Unroutable`] naming the topic, or is dropped with
/// [`UnroutablePolicy::Drop`](courier_core::UnroutablePolicy::Drop)
/// (see [Unroutable publishes](crate#unroutable-publishes)); provision
/// groups first.
///
/// Cheap to share (`Arc`); publishes from many tasks are pipelined over one
/// channel.
#[derive(Debug)]
pub struct AmqpPublisher {
    link: Arc<Link>,
}

impl AmqpPublisher {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        AmqpPublisher { link }
    }

    #[cfg(test)]
    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Connects a publisher of its own.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] or a typed [`Error::Connect`].
    pub async fn connect(url: &str, config: AmqpConfig) -> Result<Self> {
        let (url, config) = crate::prepare(url, config)?;
        Ok(AmqpPublisher::new(
            Link::open(&url, Arc::new(config), "publisher").await?,
        ))
    }

    fn prepare(&self, topic: &str, messages: &[Message]) -> Result<String> {
        courier_core::name::validate_topic(topic)?;
        if self.link.is_closed() {
            return Err(Error::Closed("publisher"));
        }
        let config = self.link.config();
        for message in messages {
            codec::check(message, config.max_payload)?;
        }
        Ok(topology::exchange_name(config, topic))
    }
}

#[async_trait]
impl Publisher for AmqpPublisher {
    async fn publish(&self, topic: &str, message: Message) -> Result<()> {
        self.publish_batch(topic, vec![message]).await
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
        instrumented_publish(
            crate::MESSAGING_SYSTEM,
            topic,
            messages,
            |messages| async move {
                let exchange = self.prepare(topic, &messages)?;
                let mandatory = self.link.config().unroutable == UnroutablePolicy::Error;
                send(
                    &self.link,
                    Route::Exchange(&exchange),
                    mandatory,
                    &messages,
                    None,
                )
                .await
                .map_err(|e| crate::unroutable::naming_topic(e, topic))
            },
        )
        .await
    }
}

#[async_trait]
impl Close for AmqpPublisher {
    fn health(&self) -> courier_core::telemetry::Health {
        crate::lag::health(&self.link)
    }

    async fn close(&self) -> Result<()> {
        self.link.close().await
    }
}
