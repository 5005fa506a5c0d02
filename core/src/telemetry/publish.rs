//! The publish span and trace-context injection every adapter's publish
//! goes through.

use std::future::Future;
use std::time::Instant;

use tracing::Instrument;

use super::TraceContext;
use super::trace_context::{self, TRACEPARENT};
use crate::error::Result;
use crate::message::Message;

/// Publishes `messages` to `topic` through `send` inside a `publish {topic}`
/// span (kind producer), after writing the trace context, when there is
/// one, into every message that does not carry one yet; records
/// [`SENT_MESSAGES`](super::metrics::SENT_MESSAGES) and
/// [`OPERATION_DURATION`](super::metrics::OPERATION_DURATION).
///
/// Adapters call this from `Publisher::publish` and `publish_batch`, so
/// every broker gets the same spans, headers and metrics; `system` is the
/// `messaging.system` value (`"rabbitmq"`, `"kafka"`, ...). The trace
/// context written is the publish span's: with the `otel` feature and an
/// OpenTelemetry layer, its OpenTelemetry context; otherwise a new span id
/// under [`TraceContext::current`] (the handler's message when publishing
/// from a consumer). With neither, nothing is written: courier does not
/// name a parent span that nobody recorded.
///
/// # Errors
///
/// What `send` returns.
pub async fn instrumented_publish<F, Fut>(
    system: &'static str,
    topic: &str,
    mut messages: Vec<Message>,
    send: F,
) -> Result<()>
where
    F: FnOnce(Vec<Message>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    if !super::is_enabled() {
        return send(messages).await;
    }
    let (recorded, spans) = (super::recorder::installed(), super::spans_wanted());
    if !recorded && !spans {
        // Nobody listens: the trace context is all there is to write, and
        // without `otel`, there is one only inside a scope.
        if cfg!(feature = "otel") || trace_context::in_scope() {
            write_context(&mut messages, &tracing::Span::none());
        }
        return send(messages).await;
    }
    let span = if spans {
        publish_span(system, topic, &messages)
    } else {
        tracing::Span::none()
    };
    write_context(&mut messages, &span);
    let count = messages.len();
    let started = recorded.then(Instant::now);
    let outcome = if span.is_disabled() {
        // Nobody records the span: no instrumented future to poll through.
        send(messages).await
    } else {
        send(messages).instrument(span.clone()).await
    };
    if let Err(error) = &outcome {
        span.record("error.type", super::metrics::error_type(error));
        span.record("otel.status_code", "ERROR");
    }
    if let Some(started) = started {
        super::metrics::record_publish(system, topic, count, started.elapsed(), &outcome);
    }
    outcome
}

/// Writes the context `span` gives its messages, if it is in a trace, into
/// every message that carries no `traceparent` yet.
fn write_context(messages: &mut [Message], span: &tracing::Span) {
    if let Some(context) = publish_context(span) {
        for message in messages {
            let headers = message.headers_mut();
            if headers.get(TRACEPARENT).is_none() {
                context.inject(headers);
            }
        }
    }
}

fn publish_span(system: &'static str, topic: &str, messages: &[Message]) -> tracing::Span {
    let single = match messages {
        [message] => Some(message),
        _ => None,
    };
    tracing::info_span!(
        "publish",
        otel.name = %format_args!("publish {topic}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = topic,
        messaging.message.id = single.map(|m| tracing::field::display(m.id())),
        messaging.message.conversation_id = single.and_then(Message::correlation_id),
        messaging.message.body.size = single.map(|m| m.payload().len()),
        messaging.batch.message_count = (messages.len() != 1).then_some(messages.len()),
        error.type = tracing::field::Empty,
    )
}

/// The span of a request (kind client), with the request's trace context
/// written into it: a request made in a trace carries it to the responder,
/// as a publish does.
pub(crate) fn request_span(topic: &str, request: &mut Message) -> tracing::Span {
    if !super::is_enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        messaging.operation.type = "send",
        messaging.operation.name = "request",
        messaging.destination.name = topic,
        messaging.message.id = %request.id(),
        messaging.message.conversation_id = request.correlation_id(),
        error.type = tracing::field::Empty,
    );
    if request.header(TRACEPARENT).is_none()
        && let Some(context) = publish_context(&span)
    {
        context.inject(request.headers_mut());
    }
    span
}

/// The context the publish span gives its messages, if it is in a trace.
fn publish_context(span: &tracing::Span) -> Option<TraceContext> {
    #[cfg(feature = "otel")]
    if let Some(context) = TraceContext::of_span(span) {
        return Some(context);
    }
    let _ = span;
    TraceContext::current().map(|parent| parent.new_child())
}
