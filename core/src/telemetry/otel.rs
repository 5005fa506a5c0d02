//! The bridge to OpenTelemetry (feature `otel`): courier's [`TraceContext`]
//! to and from the OpenTelemetry context of a `tracing` span.

use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TraceContext;

/// The OpenTelemetry span context of `span`, when a `tracing-opentelemetry`
/// layer gave it a valid one.
pub(crate) fn span_context(span: &tracing::Span) -> Option<TraceContext> {
    if span.is_none() {
        return None;
    }
    let context = span.context();
    let span_ref = context.span();
    let otel = span_ref.span_context();
    if !otel.is_valid() {
        return None;
    }
    let context = TraceContext::new(
        u128::from_be_bytes(otel.trace_id().to_bytes()),
        u64::from_be_bytes(otel.span_id().to_bytes()),
        otel.is_sampled(),
    )?;
    let state = otel.trace_state().header();
    Some(if state.is_empty() {
        context
    } else {
        context.with_state(state)
    })
}

/// Makes the remote span `parent` the OpenTelemetry parent of `span`, and
/// links `span` to it.
/// Must be called before anything else asks for `span`'s context.
pub(crate) fn set_parent(span: &tracing::Span, parent: &TraceContext) {
    if span.is_none() {
        return;
    }
    let state = parent
        .state()
        .and_then(|state| TraceState::from_str(state).ok())
        .unwrap_or_default();
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id().to_be_bytes()),
        SpanId::from_bytes(parent.span_id().to_be_bytes()),
        TraceFlags::new(parent.flags()),
        true,
        state,
    );
    span.add_link(remote.clone());
    // Fails only when the span has no OpenTelemetry layer or was already
    // started; the span then stays a root of its own trace.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}
