//! W3C trace context (`traceparent`, `tracestate`) as message headers.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use crate::headers::Headers;
use crate::message::Message;

/// Header carrying the W3C `traceparent`: version, trace id, parent span id
/// and flags, e.g. `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
pub const TRACEPARENT: &str = "traceparent";
/// Header carrying the W3C `tracestate`: vendor-specific trace data, passed
/// on unchanged.
pub const TRACESTATE: &str = "tracestate";

/// A W3C trace context: the trace a message belongs to and the span that
/// sent it.
///
/// # Examples
///
/// ```
/// use courier_core::Message;
/// use courier_core::telemetry::TraceContext;
///
/// let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let message = Message::new("x").with_header("traceparent", header).unwrap();
/// let context = TraceContext::from_message(&message).unwrap();
/// assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(context.span_id_hex(), "00f067aa0ba902b7");
/// assert!(context.is_sampled());
/// assert_eq!(context.traceparent(), header);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// High and low halves: kept 8-aligned rather than as a `u128`, so a
    /// context (held per delivery by the runtime) takes 48 bytes, not 64.
    trace_id: [u64; 2],
    span_id: u64,
    flags: u8,
    state: Option<Arc<str>>,
}

/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

impl TraceContext {
    /// A context from its parts; `None` when an id is zero (invalid in W3C).
    pub fn new(trace_id: u128, span_id: u64, sampled: bool) -> Option<Self> {
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id: split(trace_id),
            span_id,
            flags: if sampled { SAMPLED } else { 0 },
            state: None,
        })
    }

    /// A new trace: random trace and span ids, sampled.
    pub fn new_root() -> Self {
        loop {
            let [high, low, span_id] = random_words();
            if high | low != 0 && span_id != 0 {
                return TraceContext {
                    trace_id: [high, low],
                    span_id,
                    flags: SAMPLED,
                    state: None,
                };
            }
        }
    }

    /// A span of the same trace under this one: same trace id, flags and
    /// state, a new random span id.
    pub fn new_child(&self) -> Self {
        TraceContext {
            span_id: nonzero_u64(),
            ..self.clone()
        }
    }

    /// The same context with this `tracestate` (kept as given).
    pub fn with_state(mut self, state: impl Into<Arc<str>>) -> Self {
        self.state = Some(state.into());
        self
    }

    /// Reads a `traceparent` value (and an optional `tracestate`).
    ///
    /// Version `00` is read strictly; a higher version is read by its first
    /// four fields, as the W3C recommendation asks. Version `ff`, zero ids,
    /// bad lengths and non-hex digits give `None`.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let bytes = traceparent.trim().as_bytes();
        if bytes.len() < 55 {
            return None;
        }
        let version = hex(&bytes[0..2])?;
        if version == 0xff || (version == 0 && bytes.len() != 55) {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        if bytes.len() > 55 && bytes[55] != b'-' {
            return None;
        }
        let trace_id = hex(&bytes[3..35])?;
        let span_id = u64::try_from(hex(&bytes[36..52])?).ok()?;
        let flags = u8::try_from(hex(&bytes[53..55])?).ok()?;
        let mut context = TraceContext::new(trace_id, span_id, false)?;
        context.flags = flags;
        context.state = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Arc::from);
        Some(context)
    }

    /// The context a message carries in its [`TRACEPARENT`] and
    /// [`TRACESTATE`] headers; `None` without a valid `traceparent`.
    pub fn from_message(message: &Message) -> Option<Self> {
        Self::from_headers(message.headers())
    }

    /// As [`TraceContext::from_message`], from headers.
    pub fn from_headers(headers: &Headers) -> Option<Self> {
        Self::parse(headers.get(TRACEPARENT)?, headers.get(TRACESTATE))
    }

    /// The context of the code running now, as courier sees it: the
    /// OpenTelemetry context of the current `tracing` span (with the `otel`
    /// feature and a `tracing-opentelemetry` layer installed), else the
    /// context courier's consumer runtime set for the handler running on
    /// this task, else `None`.
    pub fn current() -> Option<Self> {
        #[cfg(feature = "otel")]
        if let Some(context) = Self::of_span(&tracing::Span::current()) {
            return Some(context);
        }
        CONTEXT
            .is_set()
            .then(|| CONTEXT.with(|context| context.get_or_init(drawn_from_received).clone()))
    }

    /// The OpenTelemetry context of `span`, when a `tracing-opentelemetry`
    /// layer gave it a valid one.
    #[cfg(feature = "otel")]
    pub(crate) fn of_span(span: &tracing::Span) -> Option<Self> {
        let parts = super::otel::span_context(span)?;
        let context = TraceContext::new(parts.trace_id, parts.span_id, parts.flags & 1 == 1)?;
        Some(match parts.state {
            Some(state) => context.with_state(state),
            None => context,
        })
    }

    /// This context's parts, for the OpenTelemetry bridge.
    #[cfg(feature = "otel")]
    pub(crate) fn parts(&self) -> super::otel::SpanParts {
        super::otel::SpanParts {
            trace_id: self.trace_id(),
            span_id: self.span_id(),
            flags: self.flags(),
            state: self.state().map(str::to_owned),
        }
    }

    /// The trace id.
    pub fn trace_id(&self) -> u128 {
        u128::from(self.trace_id[0]) << 64 | u128::from(self.trace_id[1])
    }

    /// The span id: the span that sent the message.
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// The trace flags byte.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the sender sampled the trace.
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The `tracestate`, if any.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id())
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// The `traceparent` value (version `00`).
    pub fn traceparent(&self) -> String {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        put_hex(&mut text[3..35], self.trace_id());
        put_hex(&mut text[36..52], u128::from(self.span_id));
        put_hex(&mut text[53..55], u128::from(self.flags));
        String::from_utf8(text.to_vec()).expect("hex digits and dashes are ASCII")
    }

    /// Writes [`TRACEPARENT`] (and [`TRACESTATE`] when there is a state)
    /// into `headers`, replacing what was there.
    pub fn inject(&self, headers: &mut Headers) {
        // Both names are valid, unreserved, and the values hold no line break
        // (a tracestate with one was refused when the header was read); only
        // headers already at the size limit can refuse them, and then the
        // message simply travels without a trace context.
        let _ = headers.insert(TRACEPARENT, self.traceparent());
        match &self.state {
            Some(state) => {
                let _ = headers.insert(TRACESTATE, &**state);
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }

    /// Runs `future` with this context as [`TraceContext::current`] while
    /// it is polled, so what it publishes joins this trace. For code outside
    /// courier's consumer runtime that learned its trace some other way (an
    /// incoming HTTP request's `traceparent`, say) and does not use
    /// OpenTelemetry.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier_core::Result<()> {
    /// use courier_core::telemetry::{TRACEPARENT, TraceContext};
    /// use courier_core::{Message, Subscription};
    ///
    /// let broker = courier_memory::MemoryBroker::new().into_broker();
    /// let mut stream = broker.subscribe(Subscription::new("orders", "audit")).await?;
    /// let incoming = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None)
    ///     .expect("valid");
    /// incoming.clone().scope(broker.publish("orders", Message::new("x"))).await?;
    ///
    /// let delivery = futures::StreamExt::next(&mut stream).await.expect("open")?;
    /// let sent = TraceContext::from_message(delivery.message()).expect("a traceparent");
    /// assert_eq!(sent.trace_id(), incoming.trace_id());
    /// assert_ne!(sent.span_id(), incoming.span_id()); // the publish's own span
    /// # Ok(()) }
    /// ```
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        Scoped {
            context: OnceLock::from(self),
            future,
        }
    }
}

/// Runs `poll` (a poll of a consumer handler's future) with the handler's
/// trace context current: `context` once drawn, drawn from `received` (its
/// message's headers) when first asked for and kept in `context`, so that
/// later attempts run in the same one.
///
/// The message's headers are read, and the handler's span id drawn, when
/// the handler first asks for its context (a publish from the handler
/// does), not on every receive: a message handled without publishing
/// anything costs no header lookup, parse or random id. Both are lent to
/// the thread by reference for the poll, so a poll costs two pointer
/// swaps, not a copy of a context or a count on the headers.
pub(crate) fn in_handler_scope<R>(
    context: &OnceLock<TraceContext>,
    received: &Headers,
    poll: impl FnOnce() -> R,
) -> R {
    RECEIVED.set(received, || CONTEXT.set(context, poll))
}

/// Whether a scope (of [`TraceContext::scope`] or a consumer handler) is
/// polled on this thread: without `otel`, [`TraceContext::current`] finds a
/// context only then.
pub(crate) fn in_scope() -> bool {
    CONTEXT.is_set()
}

/// The context of a handler whose scope has none yet: a span of the trace
/// its message carries, or a new trace when it carries none.
fn drawn_from_received() -> TraceContext {
    let parent = if RECEIVED.is_set() {
        RECEIVED.with(TraceContext::from_headers)
    } else {
        None
    };
    parent.map_or_else(TraceContext::new_root, |parent| parent.new_child())
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent())
            .field("tracestate", &self.state)
            .finish()
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

scoped_tls::scoped_thread_local! {
    /// The context of the scope polled on this thread: set by
    /// [`TraceContext::scope`], and for a consumer handler, empty until the
    /// handler first asks for it.
    static CONTEXT: OnceLock<TraceContext>
}

scoped_tls::scoped_thread_local! {
    /// The received message's headers of the handler polled on this thread,
    /// which its context is drawn from.
    static RECEIVED: Headers
}

pin_project_lite::pin_project! {
    /// A future run with a [`TraceContext`] as the current one.
    struct Scoped<F> {
        context: OnceLock<TraceContext>,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        CONTEXT.set(this.context, || this.future.poll(cx))
    }
}

/// Writes the low hex digits of `value` into `digits`, lower case,
/// zero-padded.
fn put_hex(digits: &mut [u8], value: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut value = value;
    for digit in digits.iter_mut().rev() {
        *digit = HEX[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// The value of at most 32 lower-case hex digits; `None` for anything
/// else (upper case included, as W3C asks). Read in 64-bit halves: a
/// message's trace context is read on every receive.
fn hex(digits: &[u8]) -> Option<u128> {
    let split = digits.len().saturating_sub(16);
    let (high, low) = digits.split_at(split);
    Some(u128::from(hex64(high)?) << 64 | u128::from(hex64(low)?))
}

/// The value of at most 16 lower-case hex digits.
fn hex64(digits: &[u8]) -> Option<u64> {
    /// Each byte's digit value; 0xff for a byte that is not a digit.
    const VALUES: [u8; 256] = {
        let mut values = [0xff; 256];
        let mut i = 0;
        while i < 10 {
            values[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            values[b'a' as usize + i] = 10 + i as u8;
            i += 1;
        }
        values
    };
    let mut value = 0u64;
    let mut invalid = 0u8;
    for &digit in digits {
        let nibble = VALUES[usize::from(digit)];
        invalid |= nibble;
        value = value << 4 | u64::from(nibble & 0xf);
    }
    (invalid & 0xf0 == 0).then_some(value)
}

/// A trace id's high and low halves.
fn split(trace_id: u128) -> [u64; 2] {
    [(trace_id >> 64) as u64, trace_id as u64]
}

/// A random span id other than zero (W3C's invalid id).
fn nonzero_u64() -> u64 {
    loop {
        let id = random_u64();
        if id != 0 {
            return id;
        }
    }
}

/// A random 64-bit number from a per-thread wyrand generator, seeded from
/// the operating system's randomness. Ids need to be unpredictable enough
/// not to collide, not secret; a process span makes one or two, so they
/// come from a generator that costs a multiplication rather than a block
/// cipher.
fn random_u64() -> u64 {
    let [word] = random_words();
    word
}

/// `N` random numbers from the generator of [`random_u64`], in one visit
/// to the thread's state (a new root context needs three).
fn random_words<const N: usize>() -> [u64; N] {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random());
    }
    STATE.with(|state| {
        let mut next = state.get();
        let words = std::array::from_fn(|_| {
            next = next.wrapping_add(0xa076_1d64_78bd_642f);
            let product = u128::from(next) * u128::from(next ^ 0xe703_7ed1_a0b4_28db);
            (product >> 64) as u64 ^ product as u64
        });
        state.set(next);
        words
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_values_are_refused() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(ok, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(context.traceparent(), ok);
        assert_eq!(context.state(), Some("congo=t61rcWkgMzE"));
        assert_eq!(context.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
        // A later version: its first four fields count, the rest is ignored.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        assert!(TraceContext::parse(future, None).is_some());
    }

    #[test]
    fn children_share_the_trace() {
        let root = TraceContext::new_root();
        let child = root.new_child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.span_id(), root.span_id());
        assert!(child.is_sampled());
    }

    #[test]
    fn ids_do_not_repeat() {
        let ids: std::collections::HashSet<_> = (0..10_000)
            .map(|_| TraceContext::new_root())
            .flat_map(|c| [c.trace_id(), u128::from(c.span_id())])
            .collect();
        assert_eq!(ids.len(), 20_000);
        assert!(!ids.contains(&0));
    }

    #[test]
    fn inject_replaces_both_headers() {
        let mut headers = Headers::new();
        headers.insert(TRACESTATE, "old=1").unwrap();
        let context = TraceContext::new(1, 2, true).unwrap();
        context.inject(&mut headers);
        assert_eq!(
            headers.get(TRACEPARENT),
            Some("00-00000000000000000000000000000001-0000000000000002-01")
        );
        assert_eq!(headers.get(TRACESTATE), None);
    }

    #[tokio::test]
    async fn the_scope_is_current_only_while_polled() {
        let context = TraceContext::new_root();
        let seen = context
            .clone()
            .scope(async {
                tokio::task::yield_now().await;
                TraceContext::current()
            })
            .await;
        assert_eq!(seen, Some(context));
        assert_eq!(TraceContext::current(), None);
    }
}
