//! Publishing to JetStream with the publish ack awaited.

use std::future::IntoFuture;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use courier_core::adapter::wire::{self, Native};
use courier_core::{BrokerErrorKind, Error, Message, Result};

use crate::codec::insert_header;
use crate::connection::Inner;
use crate::error::op_error;

/// Publishes `messages` in order, then waits for every publish ack.
pub(crate) async fn publish(inner: &Inner, topic: &str, messages: Vec<Message>) -> Result<()> {
    inner.check_open()?;
    courier_core::name::validate_topic(topic)?;
    let limit = inner.client.max_payload();
    for message in &messages {
        let size = message.payload().len() + message.headers().byte_size();
        if size > limit {
            return Err(Error::PayloadTooLarge { size, limit });
        }
    }
    // The whole call, not only the ack's wait: a stream to declare or a
    // client that takes no more commands while it reconnects ends in a
    // timeout too, never in a hang.
    inner
        .bounded("publish", sent_and_confirmed(inner, topic, messages))
        .await
}

/// Declares the topic's stream if needed, sends every message and awaits
/// their JetStream acks.
async fn sent_and_confirmed(inner: &Inner, topic: &str, messages: Vec<Message>) -> Result<()> {
    inner.ensure_stream(topic).await?;
    // One subject for the call: every publish takes a reference to it
    // instead of copying the topic twice (`String`, then `Subject`).
    let subject = async_nats::Subject::from(topic);
    // A publish ack cannot come over a new connection: across a lost one
    // the call fails at once instead of waiting out the request timeout.
    let confirmed = async {
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            let size = message.payload().len();
            let ack = inner
                .js
                .publish_with_headers(
                    subject.clone(),
                    headers(&message),
                    message.payload().clone(),
                )
                .await
                .map_err(|e| publish_error(inner, e, size))?;
            acks.push(async move { ack.into_future().await.map_err(|e| (e, size)) });
        }
        for ack in futures::future::join_all(acks).await {
            ack.map_err(|(e, size)| publish_error(inner, e, size))?;
        }
        Ok(())
    };
    inner.unless_disconnected("publish", confirmed).await
}

/// The NATS headers a message travels with.
pub(crate) fn headers(message: &Message) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // `Nats-Msg-Id` carries the courier id (the subscriber reads it back as
    // such), so the id travels once.
    wire::encode(message, Native::default(), |name, value| {
        insert_header(&mut headers, name, value);
    });
    headers
}

/// A failed publish of a message with `size` payload bytes.
pub(crate) fn publish_error(
    inner: &Inner,
    err: async_nats::jetstream::context::PublishError,
    size: usize,
) -> Error {
    match err.kind() {
        PublishErrorKind::TimedOut => Error::Timeout {
            operation: "nats publish ack",
            after: inner.config.request_timeout,
        },
        PublishErrorKind::MaxPayloadExceeded => Error::PayloadTooLarge {
            size,
            limit: inner.client.max_payload(),
        },
        PublishErrorKind::StreamNotFound => Error::broker(
            crate::error::BROKER,
            "publish",
            BrokerErrorKind::NotFound,
            err,
        ),
        PublishErrorKind::Other if err.to_string().contains("maximum") => Error::broker(
            crate::error::BROKER,
            "publish",
            BrokerErrorKind::LimitReached,
            err,
        ),
        _ => op_error("publish", err),
    }
}
