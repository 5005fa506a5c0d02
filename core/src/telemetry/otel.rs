//! The bridge to OpenTelemetry (feature `otel`): the parts of a trace
//! context (ids, flags, state) to and from the OpenTelemetry context of a
//! `tracing` span. `trace_context` makes a `TraceContext` of them.

use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A span context's parts, as W3C trace context carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpanParts {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) flags: u8,
    /// The `tracestate` header, when there is one.
    pub(crate) state: Option<String>,
}

/// The OpenTelemetry span context of `span`, when a `tracing-opentelemetry`
/// layer gave it a valid one.
pub(crate) fn span_context(span: &tracing::Span) -> Option<SpanParts> {
    if span.is_none() {
        return None;
    }
    let context = span.context();
    let span_ref = context.span();
    let otel = span_ref.span_context();
    if !otel.is_valid() {
        return None;
    }
    let state = otel.trace_state().header();
    Some(SpanParts {
        trace_id: u128::from_be_bytes(otel.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(otel.span_id().to_bytes()),
        flags: otel.trace_flags().to_u8(),
        state: (!state.is_empty()).then_some(state),
    })
}

/// Makes the remote span `parent` the OpenTelemetry parent of `span`, and
/// links `span` to it.
/// Must be called before anything else asks for `span`'s context.
pub(crate) fn set_parent(span: &tracing::Span, parent: &SpanParts) {
    if span.is_none() {
        return;
    }
    let state = parent
        .state
        .as_deref()
        .and_then(|state| TraceState::from_str(state).ok())
        .unwrap_or_default();
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id.to_be_bytes()),
        SpanId::from_bytes(parent.span_id.to_be_bytes()),
        TraceFlags::new(parent.flags),
        true,
        state,
    );
    span.add_link(remote.clone());
    // Fails only when the span has no OpenTelemetry layer or was already
    // started; the span then stays a root of its own trace.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}
