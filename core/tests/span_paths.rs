//! The two paths of courier's telemetry, in one process run in order: with
//! no `tracing` subscriber, no span is built and the received trace context
//! is read only when a handler publishes, yet a follow-up still carries the
//! trace (in every attempt, the same handler context); with a subscriber
//! that takes `INFO` spans, the publish, process and ack spans are built
//! with their fields. (A binary of its own: whether a subscriber ever
//! existed is process-wide.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_core::runtime::{self, Consumer, Envelope, HandlerError, RetryPolicy};
use courier_core::telemetry::{TRACEPARENT, TraceContext};
use courier_core::{Broker, Bytes, Message, Subscription};
use courier_memory::MemoryBroker;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

const UPSTREAM: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn both_paths_propagate_and_only_a_listening_subscriber_gets_spans() {
    // First, nobody listens: the fast path.
    assert!(!tracing::dispatcher::has_been_set());
    assert_eq!(
        tracing::level_filters::LevelFilter::current(),
        tracing::level_filters::LevelFilter::OFF
    );
    current_thread().block_on(async {
        let broker = MemoryBroker::new().into_broker();
        let (first, second) = follow_up_through(&broker, "orders-a", "invoices-a", true).await;
        assert_eq!(first.trace_id(), 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(first, second, "each attempt runs in the same context");
    });

    // Then a subscriber that takes INFO spans, scoped to this thread (the
    // runtime below runs every task on it).
    let spans = Recorded::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _listening = tracing::subscriber::set_default(subscriber);
    current_thread().block_on(async {
        let broker = MemoryBroker::new().into_broker();
        let (handler, _) = follow_up_through(&broker, "orders-b", "invoices-b", false).await;
        assert_eq!(
            handler.trace_id(),
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736
        );
    });
    let spans = spans.0.lock().unwrap();
    let named = |name: &str| {
        spans
            .iter()
            .filter(|fields| fields.get("otel.name").map(String::as_str) == Some(name))
            .collect::<Vec<_>>()
    };
    let [process] = named("process orders-b")[..] else {
        panic!("one process span for orders-b in {spans:#?}");
    };
    for (field, value) in [
        ("otel.kind", "consumer"),
        ("messaging.system", "memory"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", "orders-b"),
        ("messaging.consumer.group.name", "billing"),
        ("messaging.message.body.size", "5"),
    ] {
        assert_eq!(
            process.get(field).map(String::as_str),
            Some(value),
            "{field}"
        );
    }
    assert!(process.contains_key("messaging.message.id"));
    // The order and the follow-up were published; each delivery was acked.
    assert_eq!(named("publish orders-b").len(), 1);
    assert_eq!(named("publish invoices-b").len(), 1);
    let [ack] = named("ack orders-b")[..] else {
        panic!("one ack span for orders-b in {spans:#?}");
    };
    assert_eq!(
        ack.get("messaging.operation.type").map(String::as_str),
        Some("settle")
    );
}

/// Publishes an order carrying [`UPSTREAM`] to `orders`, handles it with a
/// handler that publishes a follow-up to `invoices` (failing its first
/// attempt after publishing when `fail_once`), and checks that every
/// follow-up joins the upstream trace with a span of its own. Returns the
/// handler's context in its first and last attempt.
async fn follow_up_through(
    broker: &Broker,
    orders: &'static str,
    invoices: &'static str,
    fail_once: bool,
) -> (TraceContext, TraceContext) {
    let (contexts, mut contexts_rx) = mpsc::unbounded_channel();
    let attempts = Arc::new(AtomicU32::new(0));
    let handler = {
        let broker = broker.clone();
        runtime::raw_envelope(move |envelope: Envelope<Bytes>| {
            let (broker, contexts, attempts) = (broker.clone(), contexts.clone(), attempts.clone());
            async move {
                contexts.send(TraceContext::current())?;
                let next = envelope.meta.follow_up(Message::new("follow-up"));
                broker.publish(invoices, next).await?;
                if fail_once && attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(HandlerError::transient("once"));
                }
                Ok(())
            }
        })
    };
    let retry = RetryPolicy::exponential()
        .max_attempts(2)
        .min_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(1));
    let first = Consumer::builder(broker, Subscription::new(orders, "billing"), handler)
        .retry(retry)
        .start()
        .await
        .unwrap();
    let (followed, mut followed_rx) = mpsc::unbounded_channel();
    let forwarding = runtime::raw(move |message: Message| {
        let followed = followed.clone();
        async move {
            followed.send(message)?;
            Ok(())
        }
    });
    let second = Consumer::builder(broker, Subscription::new(invoices, "mailer"), forwarding)
        .start()
        .await
        .unwrap();
    let order = Message::new("order")
        .with_header(TRACEPARENT, UPSTREAM)
        .unwrap();
    broker.publish(orders, order).await.unwrap();

    let upstream = TraceContext::parse(UPSTREAM, None).unwrap();
    let attempts = if fail_once { 2 } else { 1 };
    let mut handler_contexts = Vec::new();
    for _ in 0..attempts {
        let handler = recv(&mut contexts_rx)
            .await
            .expect("the handler runs in a trace");
        assert_eq!(handler.trace_id(), upstream.trace_id());
        assert_ne!(handler.span_id(), upstream.span_id());
        let followed = TraceContext::from_message(&recv(&mut followed_rx).await)
            .expect("the follow-up has a traceparent");
        assert_eq!(followed.trace_id(), upstream.trace_id(), "one trace");
        assert!(
            ![upstream.span_id(), handler.span_id()].contains(&followed.span_id()),
            "the publish is a span of its own"
        );
        handler_contexts.push(handler);
    }
    assert_eq!(first.shutdown().await.unwrap().handled, 1);
    assert_eq!(second.shutdown().await.unwrap().handled, attempts);
    let last = handler_contexts.pop().unwrap();
    (handler_contexts.pop().unwrap_or_else(|| last.clone()), last)
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("in time")
        .expect("open channel")
}

/// A layer that keeps the fields every new span was created with.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<HashMap<String, String>>>>);

impl<S: tracing::Subscriber> Layer<S> for Recorded {
    fn on_new_span(&self, attributes: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        let mut fields = Fields::default();
        attributes.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}
