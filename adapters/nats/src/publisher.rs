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

/// How long the stream lookup after a "no responders" publish may take,
/// at most (see [`lookup_budget`]): JetStream serving its streams answers
/// in milliseconds, so this leaves room for a busy server, and a publish in
/// the seconds after a restart fails (retryably) this much later at most.
const STREAM_LOOKUP: std::time::Duration = std::time::Duration::from_secs(2);

/// The lookup's budget: [`STREAM_LOOKUP`], or a quarter of the request
/// timeout when that is less, so that the lookup's end does not race the
/// bound of the publish call around it.
fn lookup_budget(request_timeout: std::time::Duration) -> std::time::Duration {
    STREAM_LOOKUP.min(request_timeout / 4)
}

/// What a publish means that the server answered with "no responders"
/// (nothing listens on the topic's subject, where the stream should). The
/// stream was declared when this connection first published to the topic,
/// so either it was deleted since ([`BrokerErrorKind::NotFound`], as
/// `found_nothing` says), or JetStream was not serving it, as in the
/// seconds after a server restart before it has restored its streams:
/// [`BrokerErrorKind::Unavailable`], retryable. Asking JetStream for the
/// stream tells the two apart: only its answer that the stream does not
/// exist keeps `NotFound`; the stream found, another failure of the lookup
/// or no answer within [`lookup_budget`] make it `Unavailable`.
async fn not_found_or_unavailable(inner: &Inner, topic: &str, found_nothing: Error) -> Error {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::GetStreamErrorKind;

    // JetStream that serves its streams answers this at once; one that is
    // still restoring them may hold the request until it is done.
    let budget = lookup_budget(inner.config.request_timeout);
    let lookup = tokio::time::timeout(budget, inner.js.get_stream(stream_name(topic)));
    let unavailable = |why: &'static str, source: Option<courier_core::BoxError>| {
        tracing::debug!(topic, why, "a publish found no stream listening");
        Error::broker(
            crate::error::BROKER,
            "publish",
            BrokerErrorKind::Unavailable,
            crate::error::Explained { why, source },
        )
    };
    match lookup.await {
        Ok(Err(e))
            if matches!(
                e.kind(),
                GetStreamErrorKind::JetStream(ref error)
                    if error.error_code() == ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            tracing::debug!(topic, "a publish found no stream listening: it was deleted");
            found_nothing
        }
        Ok(Ok(_)) => unavailable(
            "no responders to the publish although the topic's stream exists: \
             JetStream was probably not serving it yet (as right after a server restart)",
            None,
        ),
        Ok(Err(e)) => unavailable(
            "no responders to the publish, and the lookup of the topic's stream failed",
            Some(Box::new(e)),
        ),
        // Not a timeout of the publish (it still had time): the lookup's
        // own budget ran out, so no timer's error goes along.
        Err(_) => unavailable(
            "no responders to the publish, and no answer to a lookup of the topic's stream \
             within its budget: JetStream is probably not serving its streams yet",
            None,
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

/// A failed publish of a message with `size` payload bytes. A timeout is
/// left to the bound around the whole call ([`Inner::bounded`]), which
/// makes it [`Error::Timeout`].
pub(crate) fn publish_error(
    inner: &Inner,
    err: async_nats::jetstream::context::PublishError,
    size: usize,
) -> Error {
    match err.kind() {
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
