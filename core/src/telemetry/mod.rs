//! Observability: spans after the OpenTelemetry messaging conventions, W3C
//! trace context in message headers, metrics through the
//! [`metrics`](::metrics) facade, consumer lag and health.
//!
//! Core and the consumer runtime emit all of it, so every adapter has it
//! without any code of its own beyond a call to [`instrumented_publish`]
//! in its publish and a lag and health answer.
//!
//! # Spans
//!
//! `tracing` spans at `INFO`, named and attributed after the OpenTelemetry
//! messaging semantic conventions. Span names are `{operation} {topic}`,
//! carried in the `otel.name` field (the tracing name is the bare
//! operation), the span kind in `otel.kind`, as `tracing-opentelemetry`
//! reads them:
//!
//! | span | kind | `messaging.operation.type` | where |
//! |---|---|---|---|
//! | `publish {topic}` | producer | `send` | every `publish` / `publish_batch` of every adapter |
//! | `process {topic}` | consumer | `process` | the consumer runtime, one per delivery, across its attempts and retries |
//! | `ack {topic}`, `nack {topic}`, `dead_letter {topic}` | client | `settle` | the runtime's settlement, inside the process span |
//!
//! Attributes: `messaging.system` (`memory`, `rabbitmq`, `kafka`, `nats`),
//! `messaging.destination.name` (the topic), `messaging.consumer.group.name`,
//! `messaging.message.id`, `messaging.operation.name`,
//! `messaging.message.conversation_id` (the correlation id, so one flow can
//! be searched by it), `messaging.message.body.size`,
//! `messaging.batch.message_count` for batches,
//! `messaging.destination.partition.id` and `messaging.kafka.offset` where
//! the delivery knows them (Kafka), and `error.type` with
//! `otel.status_code = ERROR` when a publish fails or a message is
//! dead-lettered.
//!
//! # Trace context in headers
//!
//! A publish made in a trace writes the W3C [`TRACEPARENT`] header (and
//! [`TRACESTATE`] when there is one) into each message that does not carry
//! one already, naming the publish span as the parent. "In a trace" means
//! the publish span has an OpenTelemetry context (feature `otel` with a
//! layer installed), or [`TraceContext::current`] has one: a handler's
//! message, or the current OpenTelemetry span. A publish outside any trace
//! writes no header, rather than name a parent span that nobody recorded;
//! the consumer's process span then starts the trace, and everything its
//! handler publishes carries it. A message that already has a
//! `traceparent` keeps it: it names the context the message was created in
//! (an outbox row, a dead-letter copy, a relayed message), which is the one
//! the conventions propagate. On receive, the runtime reads the header and
//! the process span joins the sender's trace.
//!
//! Without the `otel` feature nothing about the trace context needs an
//! OpenTelemetry SDK: courier generates random trace and span ids, and
//! while a handler runs, [`TraceContext::current`] is the received context
//! with a span id of its own (or a new trace when the message carried
//! none), so a follow-up published from the handler
//! (see [`Meta::follow_up`](crate::runtime::Meta::follow_up)) carries the
//! same trace id. The context follows the handler's future; work it spawns
//! onto other tasks does not inherit it (as with `tracing` spans).
//!
//! # Parent, not only a link
//!
//! The conventions let the creation context be the parent of the process
//! span when one message is processed at a time (it is always so in
//! courier's runtime), and ask for a link otherwise. courier makes it the
//! **parent** (with the `otel` feature), so a request's path reads as one
//! trace across services, and **also adds a link** to it, for backends that
//! follow links. Batches are not processed as one, so the link-only case
//! does not arise.
//!
//! # OpenTelemetry (feature `otel`)
//!
//! With the `otel` feature and a `tracing-opentelemetry` layer installed:
//! the context read from `traceparent` becomes the OpenTelemetry parent of
//! the process span, and publish spans write their own OpenTelemetry span
//! context into the header, so producer and consumer spans form one trace
//! in any OpenTelemetry backend. The feature pulls only the OpenTelemetry
//! API and `tracing-opentelemetry`; the SDK and exporters are the
//! application's choice.
//!
//! # Metrics
//!
//! See [`metrics`] for the names, units and labels.
//!
//! # Consumer lag
//!
//! [`Broker::lag`](crate::Broker::lag) (bounded by
//! [`DEFAULT_LAG_TIMEOUT`]) or [`lag_within`] with a bound of one's own
//! asks the broker how many messages a group has not yet settled; [`Lag`]
//! says what each broker counts and where the count is exact. A consumer
//! built with
//! [`ConsumerBuilder::report_lag`](crate::runtime::ConsumerBuilder::report_lag)
//! refreshes its group's lag in the background into the
//! [`LAG`](metrics::LAG) gauge and its [status](crate::runtime::RunningConsumer::status),
//! so a metrics scrape reads the last value and never waits on a broker.
//!
//! # Health
//!
//! [`Broker::health`](crate::Broker::health) says from the client's own
//! state, without a round trip, whether the connection is usable now
//! ([`Health`]); [`RunningConsumer::status`](crate::runtime::RunningConsumer::status)
//! says what a consumer is doing.
//!
//! # Cost, and turning it off
//!
//! Telemetry is on by default and costs little when nobody listens:
//!
//! - **No `tracing` subscriber, or one that filters `INFO` out** (a
//!   `WARN` level filter, say): no span is built. The one check is
//!   `tracing`'s own maximum level, read before each span would be made.
//! - **No `metrics` recorder**: instruments are no-ops and no clock is
//!   read for ages or durations.
//! - **What stays** is the trace context, since it is what carries a trace
//!   to follow-ups without any subscriber: each handler attempt runs with
//!   its message's context current. At every poll of the handler, the
//!   delivery's context slot and its message's headers are lent to the
//!   thread by reference (two pointer swaps of a scoped thread-local:
//!   nothing is copied, and the headers are not even reference-counted).
//!   The `traceparent` is parsed, and the handler's span id drawn, only
//!   when the handler asks for its context, which a publish from the
//!   handler does; a handler that publishes nothing costs no parse.
//!   Without the `otel` feature, a publish outside any handler or
//!   [`TraceContext::scope`] looks nothing up.
//!
//! Measured on the in-process broker (64-byte messages carrying a
//! `traceparent`, published one at a time and consumed by the runtime
//! with a no-op handler, about 780 ns of CPU time a message with telemetry
//! off): with no subscriber telemetry adds about 5 to 10 ns a message
//! (about 1 %, less than the spread between runs on a busy machine), the
//! same with a subscriber that filters courier's spans out, and about
//! 500 to 750 ns (65 to 90 %) with a bare `tracing_subscriber::Registry`
//! that records every span. A `traceparent` written by a publish made in a
//! trace costs that header's allocations wherever the message goes (about
//! 250 ns on that broker). `cargo bench -p courier-memory --bench
//! telemetry_overhead` measures it on your machine.
//!
//! [`set_enabled(false)`](set_enabled) turns all of it off for the
//! process: no spans, no trace context written, read or made current, no
//! metrics.

mod consumer;
pub(crate) mod health;
pub(crate) mod lag;
mod lag_report;
pub mod metrics;
#[cfg(feature = "otel")]
mod otel;
mod publish;
pub(crate) mod recorder;
mod trace_context;

use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) use consumer::{ConsumerTelemetry, Traced};
pub use health::Health;
pub(crate) use lag_report::LagReport;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns courier's spans, trace-context headers and metrics on or off for
/// the whole process (on by default). Off, publishes write no
/// `traceparent`, handlers run with no trace context (a follow-up carries
/// none), and the runtime records nothing; lag, health and the consumer's
/// own [stats](crate::runtime::ConsumerStats) are unaffected. Meant for
/// measuring what telemetry costs (see [the cost](self#cost-and-turning-it-off)),
/// and for services that want none of it.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether courier's telemetry is on; see [`set_enabled`].
#[inline]
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether any `tracing` subscriber could record an `INFO` span (courier's
/// level): the first test every span macro makes, made before the span is
/// built, so that with no subscriber (or one filtered above `INFO`) the
/// runtime moves no disabled span around (that costs more than the test).
#[inline]
fn spans_wanted() -> bool {
    tracing::level_filters::LevelFilter::current() >= tracing::Level::INFO
}
pub use lag::{DEFAULT_LAG_TIMEOUT, Lag, PartitionLag};
pub use lag_report::lag_within;
pub use publish::instrumented_publish;
pub(crate) use publish::request_span;
pub use trace_context::{TRACEPARENT, TRACESTATE, TraceContext};
