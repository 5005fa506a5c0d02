//! Publishing to JetStream with the publish ack awaited.

use std::future::IntoFuture;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use courier_core::adapter::wire::{self, Native};
use courier_core::{BrokerErrorKind, Error, Message, Result};

use crate::codec::insert_header;
use crate::config::stream_name;
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
    match inner.unless_disconnected("publish", confirmed).await {
        Err(e) if e.broker_kind() == Some(BrokerErrorKind::NotFound) => {
            Err(not_found_or_unavailable(inner, topic, e).await)
        }
        outcome => outcome,
    }
}

/// How long the stream lookup after a "no responders" publish may take
/// (within the publish's own bound): JetStream serving its streams answers
/// in milliseconds, so this leaves room for a busy server, and a publish in
/// the seconds after a restart fails (retryably) this much later at most.
const STREAM_LOOKUP: std::time::Duration = std::time::Duration::from_secs(2);

/// What a publish JetStream answered with "no responders" means. The
/// stream was declared when this connection first published to the topic,
/// so either it was deleted since ([`BrokerErrorKind::NotFound`], as
/// `found_nothing` says), or JetStream itself did not answer, as in the
/// seconds after a server restart before it serves its streams again:
/// [`BrokerErrorKind::Unavailable`], retryable. Asking JetStream for the
/// stream tells the two apart; a lookup with no answer within
/// [`STREAM_LOOKUP`] counts as the second.
async fn not_found_or_unavailable(inner: &Inner, topic: &str, found_nothing: Error) -> Error {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::GetStreamErrorKind;

    // JetStream that serves its streams answers this at once; one that is
    // still recovering them may hold the request until it is done.
    let lookup = tokio::time::timeout(STREAM_LOOKUP, inner.js.get_stream(stream_name(topic)));
    match lookup.await {
        Ok(Err(e))
            if matches!(
                e.kind(),
                GetStreamErrorKind::JetStream(ref error)
                    if error.error_code() == ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            found_nothing
        }
        Ok(Ok(_)) => Error::broker(
            crate::error::BROKER,
            "publish",
            BrokerErrorKind::Unavailable,
            "JetStream answered the publish with no responders although the topic's stream \
             exists: it was not serving the stream yet (as right after a server restart)",
        ),
        Ok(Err(e)) => Error::broker(
            crate::error::BROKER,
            "publish",
            BrokerErrorKind::Unavailable,
            format!(
                "JetStream answered the publish with no responders, and a lookup of the \
                 topic's stream failed: {e}"
            ),
        ),
        Err(_) => Error::broker(
            crate::error::BROKER,
            "publish",
            BrokerErrorKind::Unavailable,
            format!(
                "JetStream answered the publish with no responders and did not answer a lookup \
                 of the topic's stream within {STREAM_LOOKUP:?}: it is not serving its streams yet"
            ),
        ),
    }
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
            operation: "publish",
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
