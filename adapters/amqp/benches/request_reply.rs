//! Request/reply round trips on RabbitMQ: courier (`Broker::request`
//! answered by a `runtime::responder` consumer) against lapin used as
//! RabbitMQ's own RPC idiom, on the same broker, in one run.
//!
//! Both use direct reply-to: the requester consumes the pseudo-queue
//! `amq.rabbitmq.reply-to` without acks on the channel it publishes its
//! requests on, with `reply_to` set to it, and the responder publishes each
//! reply to the default exchange with that address as the routing key.
//! The raw requester matches replies by `correlation_id` in a map of
//! `oneshot` senders; its responder is a bare consume loop on a queue of
//! the type courier declares (quorum), with prefetch 64, that decodes the
//! JSON body, publishes the reply and acks (courier's responder runs at
//! concurrency 64).
//!
//! Two raw rows per figure:
//!
//! - `request …`: RabbitMQ's tutorial idiom, no publisher confirms: a
//!   request is sent and the reply awaited; the reply is published and the
//!   request acked at once.
//! - `request … (raw confirmed)`: the raw pair with courier's guarantees: a
//!   request is published with `mandatory` on a channel in confirm mode
//!   and its confirm awaited (courier reports a request nobody can receive
//!   as `NoResponders`, which takes the confirm), and the responder acks a
//!   request only after its reply's confirm. So that each request does not
//!   wait for the one before it to be confirmed, the raw responder answers
//!   each request on a task of its own here.
//!
//! `cargo bench -p courier-amqp --bench request_reply` (starts the
//! RabbitMQ fixture container; `COURIER_TEST_RABBITMQ_URL` uses a running
//! broker instead). `-- ROUNDS` (or `COURIER_BENCH_ROUNDS`) sets the
//! interleaved rounds per concurrency (default 5); a word after `--`
//! (`tutorial`, `against`, `confirmed`) runs only that comparison. The
//! rows marked `raw against raw` run the tutorial idiom on both sides (two
//! pairs on connections of their own) in the same interleaved rounds: what
//! the machine and the broker alone do to a ratio. Rows as in
//! [`courier_testkit::bench_request::compare`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use courier_amqp::AmqpBroker;
use courier_testkit::bench::Report;
use courier_testkit::bench_request::{
    self, CourierPair, PER_TASK, Ping, RoundFuture, RoundTrips, measure, ping,
};
use courier_testkit::fixtures::unique_name;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::oneshot;

const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

fn main() {
    let rounds = courier_testkit::bench::rounds(5);
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.parse::<usize>().is_err() && !a.starts_with('-'))
        .collect();
    let runtime = courier_testkit::bench::runtime();
    runtime.block_on(async move {
        let fixture = courier_testkit::fixtures::rabbitmq()
            .await
            .expect("RabbitMQ fixture");
        let url = fixture.url().to_owned();
        let tutorial = Rpc::start(&url, false).await;
        let confirmed = Rpc::start(&url, true).await;
        // A second tutorial pair, on connections of its own as courier's
        // pair has: the other side of the raw-against-raw rows.
        let tutorial_twin = Rpc::start(&url, false).await;
        let responding = AmqpBroker::connect(&url)
            .await
            .expect("connect")
            .into_broker();
        let requester = AmqpBroker::connect(&url)
            .await
            .expect("connect")
            .into_broker();
        let courier =
            CourierPair::start(&responding, requester, unique_name("bench-courier-rr")).await;
        bench_request::warm_up(&[&tutorial, &confirmed, &tutorial_twin, &courier]).await;
        let mut report = Report::new(format!(
            "AMQP (RabbitMQ fixture) request/reply, direct reply-to, {} B JSON bodies, \
             {rounds} rounds per concurrency, 2 worker threads",
            bench_request::body_size()
        ));
        let variants: [(&str, &str, &Rpc, &dyn RoundTrips); 3] = [
            ("tutorial", "", &tutorial, &courier),
            (
                "against",
                courier_testkit::bench::against_itself(true),
                &tutorial,
                &tutorial_twin,
            ),
            ("confirmed", " (raw confirmed)", &confirmed, &courier),
        ];
        for (word, variant, raw, courier) in variants {
            if picked.is_empty() || picked.iter().any(|p| p == word) {
                bench_request::compare(
                    &mut report,
                    "amqp",
                    rounds,
                    variant,
                    &PER_TASK,
                    Some(raw),
                    courier,
                )
                .await;
            }
        }
        report.finish();
        courier.stop().await;
        responding.close().await.expect("close");
        tutorial.close().await;
        confirmed.close().await;
        tutorial_twin.close().await;
    });
}

/// Replies awaited by correlation id.
type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// RabbitMQ's RPC idiom with lapin: a requester on direct reply-to and a
/// bare responder, each on a connection of its own.
struct Rpc {
    requester: Connection,
    channel: Channel,
    pending: Pending,
    queue: String,
    responder: Connection,
    /// Requests published with `mandatory` and confirmed, replies
    /// confirmed before the request's ack.
    confirmed: bool,
}

impl Rpc {
    async fn start(url: &str, confirmed: bool) -> Self {
        let queue = unique_name("bench-raw-rr");
        let responder = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect");
        start_responder(&responder, &queue, confirmed).await;
        let requester = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = open_channel(&requester, confirmed).await;
        let mut replies = channel
            .basic_consume(
                ShortString::from(DIRECT_REPLY_TO),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume direct reply-to");
        let pending: Pending = Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(reply)) = replies.next().await {
                let Some(id) = reply.properties.correlation_id() else {
                    continue;
                };
                let waiter = waiting.lock().expect("lock").remove(id.as_str());
                if let Some(waiter) = waiter {
                    let _ = waiter.send(reply.data);
                }
            }
        });
        Rpc {
            requester,
            channel,
            pending,
            queue,
            responder,
            confirmed,
        }
    }

    async fn close(&self) {
        let _ = self.requester.close(200, "done".into()).await;
        let _ = self.responder.close(200, "done".into()).await;
    }
}

/// A channel on `connection`, in confirm mode when `confirmed`.
async fn open_channel(connection: &Connection, confirmed: bool) -> Channel {
    let channel = connection.create_channel().await.expect("channel");
    if confirmed {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
    }
    channel
}

/// Declares `queue` (quorum, as courier's group queues) and answers every
/// request on it with [`answer`]: in turn, or each on a task of its own
/// when `confirmed`.
async fn start_responder(connection: &Connection, queue: &str, confirmed: bool) {
    let channel = open_channel(connection, confirmed).await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .expect("declare");
    channel
        .basic_qos(64, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut requests = channel
        .basic_consume(
            queue.into(),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            let answering = answer(channel.clone(), request, confirmed);
            if confirmed {
                // Waiting for a confirm would hold the loop up for a broker
                // round trip per request: a request is answered on a task
                // of its own (the prefetch bounds how many).
                tokio::spawn(answering);
            } else {
                answering.await;
            }
        }
    });
}

/// Answers one request: decode, encode, publish the reply to its
/// `reply_to` (awaiting the confirm when `confirmed`), ack.
async fn answer(channel: Channel, request: lapin::message::Delivery, confirmed: bool) {
    let Some(reply_to) = request.properties.reply_to().clone() else {
        return;
    };
    let body: Ping = serde_json::from_slice(&request.data).expect("decode");
    let reply_body = serde_json::to_vec(&body).expect("encode");
    let mut properties = BasicProperties::default();
    if let Some(id) = request.properties.correlation_id() {
        properties = properties.with_correlation_id(id.clone());
    }
    let confirm = channel
        .basic_publish(
            ShortString::from(""),
            reply_to,
            BasicPublishOptions::default(),
            &reply_body,
            properties,
        )
        .await
        .expect("reply");
    if confirmed {
        assert!(
            matches!(confirm.await.expect("confirm"), Confirmation::Ack(_)),
            "reply not confirmed"
        );
    }
    request.ack(BasicAckOptions::default()).await.expect("ack");
}

impl RoundTrips for Rpc {
    fn round(&self, concurrency: usize, per_task: usize) -> RoundFuture<'_> {
        let channel = self.channel.clone();
        let pending = self.pending.clone();
        let queue: ShortString = self.queue.as_str().into();
        let confirmed = self.confirmed;
        Box::pin(measure(concurrency, per_task, move |seq| {
            let (channel, pending, queue) = (channel.clone(), pending.clone(), queue.clone());
            async move {
                let body = serde_json::to_vec(&ping(seq)).expect("encode");
                let id = seq.to_string();
                let (waiter, answered) = oneshot::channel();
                pending.lock().expect("lock").insert(id.clone(), waiter);
                let properties = BasicProperties::default()
                    .with_reply_to(DIRECT_REPLY_TO.into())
                    .with_correlation_id(id.into());
                let confirm = channel
                    .basic_publish(
                        ShortString::from(""),
                        queue,
                        BasicPublishOptions {
                            mandatory: confirmed,
                            ..BasicPublishOptions::default()
                        },
                        &body,
                        properties,
                    )
                    .await
                    .expect("request");
                if confirmed {
                    assert_eq!(
                        confirm.await.expect("confirm"),
                        Confirmation::Ack(None),
                        "request not routed"
                    );
                }
                bench_request::check_reply(seq, answered).await;
            }
        }))
    }
}
