//! The consumer runtime's spans and metrics: one `process {topic}` span per
//! delivery, a settle span per ack or nack, and the consumer instruments.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use ::metrics::{Counter, Gauge, Histogram};
use tokio_util::sync::CancellationToken;

use super::lag_report::{LagReport, LastLag, spawn_reporter};
use super::metrics as names;
use super::trace_context::{TraceContext, in_handler_scope};
use crate::delivery::Delivery;
use crate::headers::Headers;
use crate::message::Message;
use crate::pubsub::{Subscriber, Subscription};

/// What a consumer records about its deliveries; made when it is built.
pub(crate) struct ConsumerTelemetry {
    system: &'static str,
    topic: Arc<str>,
    group: Arc<str>,
    consumed: Counter,
    process_ok: Histogram,
    process_failed: Histogram,
    in_flight: Gauge,
    retries: Counter,
    dead_lettered: Counter,
    message_age: Histogram,
    lag: Gauge,
    last_lag: Arc<LastLag>,
    /// A recorder was installed when the instruments were registered; if
    /// not, they are no-ops for good and no clock is read for them.
    recorded: bool,
}

impl ConsumerTelemetry {
    /// Registers the consumer's instruments with the installed recorder.
    pub(crate) fn new(system: &'static str, topic: Arc<str>, group: Arc<str>) -> Self {
        let labels = [
            (names::SYSTEM, system.to_owned()),
            (names::DESTINATION, topic.to_string()),
            (names::CONSUMER_GROUP, group.to_string()),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            labels
                .iter()
                .map(|(k, v)| ::metrics::Label::new(*k, v.clone()))
                .chain(extra.iter().map(|(k, v)| ::metrics::Label::new(*k, *v)))
                .collect::<Vec<_>>()
        };
        ConsumerTelemetry {
            system,
            consumed: ::metrics::counter!(
                names::CONSUMED_MESSAGES,
                with(&[(names::OPERATION_NAME, "process")])
            ),
            process_ok: ::metrics::histogram!(names::PROCESS_DURATION, with(&[])),
            process_failed: ::metrics::histogram!(
                names::PROCESS_DURATION,
                with(&[(names::ERROR_TYPE, "handler_failed")])
            ),
            in_flight: ::metrics::gauge!(names::IN_FLIGHT, with(&[])),
            retries: ::metrics::counter!(names::RETRIES, with(&[])),
            dead_lettered: ::metrics::counter!(names::DEAD_LETTERED, with(&[])),
            message_age: ::metrics::histogram!(names::MESSAGE_AGE, with(&[])),
            lag: ::metrics::gauge!(names::LAG, with(&[])),
            last_lag: Arc::default(),
            recorded: super::recorder::installed(),
            topic,
            group,
        }
    }

    /// Starts the processing of `delivery`: counts it, and makes its
    /// `process {topic}` span and the trace context its handler runs in.
    #[inline]
    pub(crate) fn begin(&self, delivery: &Delivery) -> Traced {
        if !super::is_enabled() {
            return Traced::new(tracing::Span::none(), false, None);
        }
        let in_flight = self.recorded.then(|| self.count_in(delivery.message()));
        if !super::spans_wanted() {
            // Made in place: a disabled span moved through a temporary
            // costs more than the rest of this.
            return Traced::new(tracing::Span::none(), true, in_flight);
        }
        self.begin_span(delivery, in_flight)
    }

    /// Counts a delivery in (for [`begin`](Self::begin), with a recorder);
    /// out of line, so that the check before it is all `begin` inlines.
    fn count_in(&self, message: &Message) -> Gauge {
        self.consumed.increment(1);
        self.message_age.record(age(message));
        self.in_flight.increment(1.0);
        self.in_flight.clone()
    }

    /// [`begin`](Self::begin) when a subscriber may record the process span.
    #[inline(never)]
    fn begin_span(&self, delivery: &Delivery, in_flight: Option<Gauge>) -> Traced {
        let span = self.process_span(delivery);
        // The received context is the process span's parent only for a
        // span that is recorded; for the handler it is read when asked for.
        #[cfg(feature = "otel")]
        if !span.is_disabled()
            && let Some(parent) = TraceContext::from_message(delivery.message())
        {
            super::otel::set_parent(&span, &parent.parts());
        }
        Traced::new(span, true, in_flight)
    }

    fn process_span(&self, delivery: &Delivery) -> tracing::Span {
        let message = delivery.message();
        tracing::info_span!(
            "process",
            otel.name = %format_args!("process {}", self.topic),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.system = self.system,
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = &*self.topic,
            messaging.consumer.group.name = &*self.group,
            messaging.message.id = %message.id(),
            messaging.message.conversation_id = message.correlation_id(),
            messaging.message.body.size = message.payload().len(),
            messaging.destination.partition.id = delivery.partition().map(tracing::field::display),
            messaging.kafka.offset = delivery.offset(),
            messaging.message.delivery_count = delivery.delivery_count(),
            error.type = tracing::field::Empty,
        )
    }

    /// Starts reading the group's lag in the background until `stop`.
    pub(crate) fn report_lag(
        &self,
        subscriber: Arc<dyn Subscriber>,
        subscription: &Subscription,
        report: LagReport,
        stop: CancellationToken,
    ) {
        spawn_reporter(
            subscriber,
            subscription.topic().to_owned(),
            subscription.group().to_owned(),
            report,
            self.lag.clone(),
            self.last_lag.clone(),
            stop,
        );
    }

    /// The lag last read in the background, if any.
    pub(crate) fn last_lag(&self) -> Option<u64> {
        self.last_lag.get()
    }

    /// When a handler attempt starts, if its duration is recorded.
    #[inline]
    pub(crate) fn attempt_started(&self) -> Option<Instant> {
        (self.recorded && super::is_enabled()).then(Instant::now)
    }

    /// One handler attempt that began at `started` (from
    /// [`attempt_started`](Self::attempt_started)) ended; `failed` tells how.
    #[inline]
    pub(crate) fn attempt_finished(&self, started: Option<Instant>, failed: bool) {
        let Some(started) = started else {
            return;
        };
        let took = started.elapsed();
        if failed {
            self.process_failed.record(took);
        } else {
            self.process_ok.record(took);
        }
    }

    /// A retry was scheduled.
    pub(crate) fn retried(&self) {
        if !super::is_enabled() {
            return;
        }
        self.retries.increment(1);
    }

    /// A message was dead-lettered; marks the process span as failed.
    pub(crate) fn dead_lettered(&self, traced: Option<&Traced>) {
        if !super::is_enabled() {
            return;
        }
        self.dead_lettered.increment(1);
        if let Some(traced) = traced {
            traced.span.record("error.type", "dead_lettered");
            traced.span.record("otel.status_code", "ERROR");
        }
    }

    /// A span for settling a delivery of this consumer: `ack {topic}`,
    /// `nack {topic}` or `dead_letter {topic}` (operation type `settle`).
    #[inline]
    pub(crate) fn settle_span(
        &self,
        parent: Option<&Traced>,
        operation: &'static str,
        message: &Message,
    ) -> tracing::Span {
        if !super::is_enabled() || !super::spans_wanted() {
            return tracing::Span::none();
        }
        self.recorded_settle_span(parent, operation, message)
    }

    /// [`settle_span`](Self::settle_span) when a subscriber may record it.
    fn recorded_settle_span(
        &self,
        parent: Option<&Traced>,
        operation: &'static str,
        message: &Message,
    ) -> tracing::Span {
        let parent = parent.and_then(|traced| traced.span.id());
        tracing::info_span!(
            parent: parent,
            "settle",
            otel.name = %format_args!("{operation} {}", self.topic),
            otel.kind = "client",
            messaging.system = self.system,
            messaging.operation.type = "settle",
            messaging.operation.name = operation,
            messaging.destination.name = &*self.topic,
            messaging.consumer.group.name = &*self.group,
            messaging.message.id = %message.id(),
        )
    }
}

/// The process span and trace context of one delivery, held while the
/// runtime processes it; counted in flight until dropped. Empty when
/// telemetry is [off](super::set_enabled).
#[derive(Debug)]
pub(crate) struct Traced {
    span: tracing::Span,
    /// Whether the handler runs with a trace context (telemetry on).
    scoped: bool,
    /// The handler's context, drawn when an attempt first asks for it and
    /// kept for later attempts.
    context: OnceLock<TraceContext>,
    in_flight: Option<Gauge>,
}

impl Traced {
    #[inline]
    fn new(span: tracing::Span, scoped: bool, in_flight: Option<Gauge>) -> Self {
        Traced {
            span,
            scoped,
            context: OnceLock::new(),
            in_flight,
        }
    }

    /// `future` (a handler call of `message`) run inside the process span,
    /// with the delivery's trace context current. The span is borrowed, not
    /// cloned: a clone and its drop are two calls into the subscriber per
    /// attempt; so are the message's headers, which the context is drawn
    /// from if the handler asks for it.
    pub(crate) fn instrument<'s, F: Future>(
        &'s self,
        message: &'s Message,
        future: F,
    ) -> InSpan<'s, F> {
        InSpan {
            traced: self,
            received: message.headers(),
            future,
        }
    }
}

pin_project_lite::pin_project! {
    /// A handler attempt polled inside the process span it borrows, with
    /// the delivery's trace context current.
    pub(crate) struct InSpan<'s, F> {
        traced: &'s Traced,
        received: &'s Headers,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for InSpan<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let traced = *this.traced;
        let _entered = traced.span.enter();
        if traced.scoped {
            in_handler_scope(&traced.context, this.received, || this.future.poll(cx))
        } else {
            this.future.poll(cx)
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(in_flight) = &self.in_flight {
            in_flight.decrement(1.0);
        }
    }
}

/// How old `message` is now; zero if its timestamp is in the future.
fn age(message: &Message) -> Duration {
    SystemTime::now()
        .duration_since(message.timestamp())
        .unwrap_or_default()
}
