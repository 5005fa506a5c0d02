//! Request/reply with RabbitMQ's direct reply-to: no reply queue, the
//! broker routes replies straight to the requesting channel.

use std::sync::Arc;
use std::time::Duration;

use courier_core::request::{self, PendingReplies, RequestError, Requester, headers};
use courier_core::{Message, Result, async_trait};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation};
use tokio_util::sync::CancellationToken;

use crate::codec;
use crate::connection::{Link, Session};
use crate::error::{self, broker};
use crate::topology;

/// The pseudo-queue of RabbitMQ's direct reply-to.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The requests and replies of one [`AmqpBroker`](crate::AmqpBroker), on
/// a channel of its publishing connection that consumes direct reply-to.
#[derive(Debug)]
pub(crate) struct AmqpRequester {
    link: Arc<Link>,
    pending: Arc<PendingReplies>,
    channel: tokio::sync::Mutex<Option<ReplyChannel>>,
}

/// The channel requests go out on and replies come in on; replaced after
/// a reconnect or when the broker closed it.
#[derive(Debug)]
struct ReplyChannel {
    generation: u64,
    channel: Channel,
    /// Stops the channel's reply reader (a task of the link's
    /// [`TaskSet`](courier_core::adapter::TaskSet)) once the channel is
    /// replaced.
    replaced: CancellationToken,
}

impl Drop for ReplyChannel {
    fn drop(&mut self) {
        self.replaced.cancel();
    }
}

impl AmqpRequester {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        AmqpRequester {
            link,
            pending: PendingReplies::new(),
            channel: tokio::sync::Mutex::new(None),
        }
    }

    /// The session and its reply channel, opened (consuming direct
    /// reply-to without acks, in confirm mode) if missing.
    async fn channel(&self) -> Result<(Arc<Session>, Channel)> {
        let session = self.link.session().await?;
        let mut current = self.channel.lock().await;
        if let Some(open) = current.as_ref()
            && open.generation == session.generation
            && open.channel.status().connected()
        {
            return Ok((session, open.channel.clone()));
        }
        let opening = async {
            let channel = session.connection().create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    ShortString::from(DIRECT_REPLY_TO),
                    ShortString::from(""),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((channel, consumer))
        };
        let (channel, consumer) = session
            .guard(opening)
            .await
            .map_err(|e| error::from_lapin("open the reply channel", e))?;
        let replaced = CancellationToken::new();
        read_replies(&self.link, consumer, self.pending.clone(), replaced.clone());
        *current = Some(ReplyChannel {
            generation: session.generation,
            channel: channel.clone(),
            replaced,
        });
        Ok((session, channel))
    }

    /// Publishes on the reply channel and waits for the broker's confirm;
    /// `Ok(false)` when the broker returned the message (nobody bound).
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        message: &Message,
    ) -> Result<bool> {
        let (session, channel) = self.channel().await?;
        if !exchange.is_empty() {
            session
                .ensure_exchange(exchange)
                .await
                .map_err(|e| error::from_lapin("declare", e))?;
        }
        let properties = codec::encode(message, None)?;
        let confirm = session
            .basic_publish(
                &channel,
                &ShortString::from(exchange),
                &ShortString::from(routing_key),
                mandatory,
                message.payload(),
                properties,
            )
            .await
            .map_err(|e| error::from_lapin("publish", e))?;
        match session
            .guard(confirm)
            .await
            .map_err(|e| error::from_lapin("publisher confirm", e))?
        {
            Confirmation::Ack(None) => Ok(true),
            Confirmation::Ack(Some(_returned)) => Ok(false),
            Confirmation::Nack(_) => Err(broker(
                "publish",
                courier_core::BrokerErrorKind::Rejected,
                crate::error::AmqpError::Nacked,
            )),
            Confirmation::NotRequested => Err(broker(
                "publish",
                courier_core::BrokerErrorKind::Other,
                "the reply channel is not in confirm mode",
            )),
        }
    }
}

/// Hands every reply arriving on `consumer` to `pending`, on a task of the
/// link's [`TaskSet`](courier_core::adapter::TaskSet): until the channel
/// ends (its connection was lost), is `replaced`, or the link closes, so
/// that closing never waits on a channel that is still open. Closing the
/// link also ends the requests still waiting (their reply path is gone).
fn read_replies(
    link: &Link,
    mut consumer: lapin::Consumer,
    pending: Arc<PendingReplies>,
    replaced: CancellationToken,
) {
    let closed = link.closed().clone();
    link.tasks().spawn("direct reply-to reader", async move {
        loop {
            let delivery = tokio::select! {
                () = closed.cancelled() => {
                    pending.close_all();
                    break;
                }
                () = replaced.cancelled() => break,
                delivery = consumer.next() => delivery,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    pending.deliver(codec::decode(&delivery.properties, delivery.data).message);
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "the reply channel ended");
                    break;
                }
                None => break,
            }
        }
    });
}

#[async_trait]
impl Requester for AmqpRequester {
    /// Publishes the request with `mandatory` to the topic's exchange, on
    /// the channel that consumes direct reply-to. A request the broker
    /// returns (no queue bound: no group) is
    /// [`RequestError::NoResponders`].
    async fn request(
        &self,
        topic: &str,
        message: Message,
        timeout: Duration,
    ) -> std::result::Result<Message, RequestError> {
        courier_core::name::validate_topic(topic).map_err(courier_core::Error::from)?;
        codec::check(&message, self.link.config().max_payload)?;
        let exchange = topology::exchange_name(self.link.config(), topic);
        request::exchange(
            &self.pending,
            topic,
            DIRECT_REPLY_TO,
            message,
            timeout,
            |request| async move {
                match self.publish(&exchange, "", true, &request).await? {
                    true => Ok(()),
                    false => Err(RequestError::NoResponders {
                        topic: topic.to_owned(),
                    }),
                }
            },
        )
        .await
    }

    /// Publishes the reply through the default exchange to the requester's
    /// direct reply-to address: at most once (a requester whose channel is
    /// gone never gets it).
    async fn reply(&self, request: &Message, reply: Message) -> Result<()> {
        let address = headers::reply_address_of("amqp", request)?;
        self.publish("", address, false, &reply).await.map(drop)
    }

    fn late_replies(&self) -> u64 {
        self.pending.late()
    }
}
