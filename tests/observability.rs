//! Traces across a flow on every adapter compiled in, seen through
//! OpenTelemetry's in-memory span exporter: publish -> consume -> publish a
//! follow-up (`Meta::follow_up`) -> consume gives one trace, each span the
//! child of the one before, with the messaging attributes set.
//!
//! Then, on a server of its own that stops answering (its container is
//! stopped): a lag read returns a typed timeout within its bound, health
//! turns unusable, and nothing hangs.
//!
//! The binary installs one global `tracing` subscriber with an
//! OpenTelemetry layer; each case finds its own spans by its unique topics.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use courier::runtime::{self, Consumer, Envelope};
use courier::{Bytes, Message, Subscription};
#[cfg(any(feature = "amqp", feature = "kafka", feature = "nats"))]
use courier_testkit::fixtures;
use courier_testkit::{Adapter, Case, Ctx};
use futures::FutureExt;
use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::sync::mpsc;
use tracing_subscriber::layer::SubscriberExt;

static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();

fn main() -> std::process::ExitCode {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("courier-tests")));
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    EXPORTER.set(exporter).expect("set once");

    let mut adapters = Vec::new();
    adapters.push(Adapter::new("memory", &[], || async {
        courier::connect("memory://").await
    }));
    #[cfg(feature = "amqp")]
    adapters
        .push(on_server!("amqp", fixtures::rabbitmq, "").with_patience(Duration::from_secs(30)));
    #[cfg(feature = "kafka")]
    adapters.push(
        on_server!("kafka", fixtures::kafka, "?connect_timeout=30s")
            .with_patience(Duration::from_secs(60)),
    );
    #[cfg(feature = "nats")]
    adapters.push(on_server!("nats", fixtures::nats, ""));
    #[cfg_attr(
        not(any(feature = "amqp", feature = "kafka", feature = "nats")),
        allow(unused_mut)
    )]
    let mut cases = vec![Case::new("a_flow_is_one_trace", &[], |ctx| {
        a_flow_is_one_trace(ctx).boxed()
    })];
    #[cfg(any(feature = "amqp", feature = "kafka", feature = "nats"))]
    cases.push(Case::new(
        "a_stopped_broker_times_out_and_is_unusable",
        &[],
        |ctx| a_stopped_broker_times_out_and_is_unusable(ctx).boxed(),
    ));
    courier_testkit::run(&adapters, &cases)
}

/// An adapter connected to this binary's shared `$server`, with `$options`
/// added to its URL.
#[cfg(any(feature = "amqp", feature = "kafka", feature = "nats"))]
macro_rules! on_server {
    ($name:literal, $server:path, $options:literal) => {
        Adapter::new($name, &[courier_testkit::Capability::History], || async {
            let server = $server().await.map_err(|e| {
                courier::Error::broker(
                    $name,
                    "start test server",
                    courier::BrokerErrorKind::Unavailable,
                    e,
                )
            })?;
            courier::connect(&format!("{}{}", server.url(), $options)).await
        })
    };
}
#[cfg(any(feature = "amqp", feature = "kafka", feature = "nats"))]
use on_server;

/// The `messaging.system` each adapter reports.
fn system_of(adapter: &str) -> &'static str {
    match adapter {
        "memory" => "memory",
        "amqp" => "rabbitmq",
        "kafka" => "kafka",
        "nats" => "nats",
        other => panic!("unknown adapter {other}"),
    }
}

async fn a_flow_is_one_trace(ctx: Ctx) {
    let broker = ctx.broker().await;
    let orders = ctx.name("orders");
    let invoices = ctx.name("invoices");
    let (billing, mailer) = (ctx.name("billing"), ctx.name("mailer"));
    let (seen, mut seen_rx) = mpsc::unbounded_channel::<Message>();

    let first = Consumer::builder(
        &broker,
        Subscription::new(&orders, &billing),
        runtime::raw_envelope({
            let (broker, invoices) = (broker.clone(), invoices.clone());
            move |envelope: Envelope<Bytes>| {
                let (broker, invoices) = (broker.clone(), invoices.clone());
                async move {
                    let next = envelope.meta.follow_up(Message::new("invoice"));
                    broker.publish(&invoices, next).await?;
                    Ok(())
                }
            }
        }),
    )
    .start()
    .await
    .expect("first consumer starts");
    let second = Consumer::builder(
        &broker,
        Subscription::new(&invoices, &mailer),
        runtime::raw(move |message: Message| {
            let seen = seen.clone();
            async move {
                seen.send(message)?;
                Ok(())
            }
        }),
    )
    .start()
    .await
    .expect("second consumer starts");

    let conversation = format!("flow-{}", courier::MessageId::new());
    let order = Message::new("order")
        .with_correlation_id(&conversation)
        .unwrap();
    let order_id = order.id().to_string();
    broker.publish(&orders, order).await.expect("publish");
    let invoice = tokio::time::timeout(ctx.patience(), seen_rx.recv())
        .await
        .expect("the follow-up is consumed in time")
        .expect("open channel");
    let invoice_id = invoice.id().to_string();

    let names = [
        format!("publish {orders}"),
        format!("process {orders}"),
        format!("ack {orders}"),
        format!("publish {invoices}"),
        format!("process {invoices}"),
        format!("ack {invoices}"),
    ];
    let spans = wait_for_trace(&names, ctx.patience()).await;
    let [publish1, process1, ack1, publish2, process2, ack2] =
        names.each_ref().map(|name| &spans[name.as_str()]);

    // Parents: publish -> process -> (ack, publish follow-up) -> process -> ack.
    let id = |span: &SpanData| span.span_context.span_id();
    assert_eq!(process1.parent_span_id, id(publish1));
    assert!(
        process1.parent_span_is_remote,
        "the parent came from a header"
    );
    assert_eq!(ack1.parent_span_id, id(process1));
    assert_eq!(publish2.parent_span_id, id(process1));
    assert_eq!(process2.parent_span_id, id(publish2));
    assert_eq!(ack2.parent_span_id, id(process2));
    assert_eq!(publish1.parent_span_id, SpanId::INVALID, "the flow's root");
    // The process spans link to the context they were created in, too.
    for (process, publish) in [(process1, publish1), (process2, publish2)] {
        let ids = |c: &opentelemetry::trace::SpanContext| (c.trace_id(), c.span_id());
        let links: Vec<_> = process.links.iter().map(|l| ids(&l.span_context)).collect();
        assert_eq!(links, vec![ids(&publish.span_context)]);
    }

    let kinds = [
        SpanKind::Producer,
        SpanKind::Consumer,
        SpanKind::Client,
        SpanKind::Producer,
        SpanKind::Consumer,
        SpanKind::Client,
    ];
    for (span, kind) in [publish1, process1, ack1, publish2, process2, ack2]
        .into_iter()
        .zip(kinds)
    {
        assert_eq!(span.span_kind, kind, "{}", span.name);
    }

    let system = system_of(ctx.adapter().name());
    let expect = |span: &SpanData, pairs: &[(&str, &str)]| {
        let attributes = attributes(span);
        for (key, value) in pairs {
            assert_eq!(
                attributes.get(*key).map(String::as_str),
                Some(*value),
                "{} {key}: {attributes:?}",
                span.name
            );
        }
    };
    fn common<'a>(
        system: &'a str,
        topic: &'a str,
        operation: &'a str,
        kind: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("messaging.system", system),
            ("messaging.destination.name", topic),
            ("messaging.operation.name", operation),
            ("messaging.operation.type", kind),
        ]
    }
    let mut pairs = common(system, &orders, "publish", "send");
    pairs.extend([
        ("messaging.message.id", order_id.as_str()),
        ("messaging.message.conversation_id", conversation.as_str()),
        ("messaging.message.body.size", "5"),
    ]);
    expect(publish1, &pairs);
    let mut pairs = common(system, &orders, "process", "process");
    pairs.extend([
        ("messaging.consumer.group.name", billing.as_str()),
        ("messaging.message.id", order_id.as_str()),
        ("messaging.message.conversation_id", conversation.as_str()),
    ]);
    expect(process1, &pairs);
    let mut pairs = common(system, &orders, "ack", "settle");
    pairs.extend([
        ("messaging.consumer.group.name", billing.as_str()),
        ("messaging.message.id", order_id.as_str()),
    ]);
    expect(ack1, &pairs);
    let mut pairs = common(system, &invoices, "publish", "send");
    // The follow-up keeps the flow's conversation (correlation) id.
    pairs.extend([
        ("messaging.message.id", invoice_id.as_str()),
        ("messaging.message.conversation_id", conversation.as_str()),
    ]);
    expect(publish2, &pairs);
    let mut pairs = common(system, &invoices, "process", "process");
    pairs.extend([
        ("messaging.consumer.group.name", mailer.as_str()),
        ("messaging.message.id", invoice_id.as_str()),
        ("messaging.message.conversation_id", conversation.as_str()),
    ]);
    expect(process2, &pairs);
    let partitioned = ctx.adapter().name() == "kafka";
    for process in [process1, process2] {
        let attributes = attributes(process);
        for key in [
            "messaging.destination.partition.id",
            "messaging.kafka.offset",
        ] {
            assert_eq!(
                attributes.contains_key(key),
                partitioned,
                "{} {key}: {attributes:?}",
                process.name
            );
        }
    }
    // The header the second consumer saw names the follow-up's publish span.
    let header = invoice.header("traceparent").expect("traceparent header");
    assert_eq!(
        header,
        format!(
            "00-{}-{}-01",
            publish2.span_context.trace_id(),
            publish2.span_context.span_id()
        )
    );

    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    broker.close().await.unwrap();
}

/// A server of the adapter's own, to stop, with the URL options to reach
/// it; `None` for the in-process broker, which cannot stop answering.
#[cfg(any(feature = "amqp", feature = "kafka", feature = "nats"))]
async fn own_server(adapter: &str) -> Option<(fixtures::BrokerFixture, &'static str)> {
    let started = match adapter {
        #[cfg(feature = "amqp")]
        "amqp" => (fixtures::fresh_rabbitmq().await, ""),
        #[cfg(feature = "kafka")]
        "kafka" => (fixtures::fresh_kafka().await, "?connect_timeout=10s"),
        #[cfg(feature = "nats")]
        "nats" => (fixtures::fresh_nats().await, ""),
        _ => return None,
    };
    match started {
        (Ok(server), options) => Some((server, options)),
        (Err(e), _) => panic!("{adapter}: server of its own: {e}"),
    }
}

/// Stops the adapter's own server: the lag read ends in a typed timeout
/// within its bound, health turns unusable, and closing does not hang.
#[cfg(any(feature = "amqp", feature = "kafka", feature = "nats"))]
async fn a_stopped_broker_times_out_and_is_unusable(ctx: Ctx) {
    let adapter = ctx.adapter().name();
    let Some((server, options)) = own_server(adapter).await else {
        eprintln!("{adapter}: the in-process broker cannot stop answering; nothing to check");
        return;
    };
    let url = format!("{}{options}", server.url());
    let broker = courier::connect(&url).await.expect("connect");
    let (topic, group) = (ctx.name("silent"), ctx.name("probe"));
    broker
        .provision(&Subscription::new(&topic, &group))
        .await
        .expect("provision");
    broker
        .publish(&topic, Message::new("x"))
        .await
        .expect("publish");
    assert_eq!(broker.lag(&topic, &group).await.expect("lag").total, 1);
    assert!(broker.health().is_usable(), "{}", broker.health());

    server.stop().await.expect("stop the server");
    let bound = Duration::from_secs(2);
    let started = Instant::now();
    let read = courier::telemetry::lag_within(&*broker.subscriber(), &topic, &group, bound).await;
    let took = started.elapsed();
    match read {
        Err(courier::Error::Timeout { operation, after }) => {
            assert_eq!((operation, after), ("lag", bound));
        }
        other => panic!("{adapter}: expected a lag timeout, got {other:?}"),
    }
    eprintln!("{adapter}: lag read on a stopped server: timeout after {took:?} (bound {bound:?})");

    let deadline = Instant::now() + ctx.patience();
    while broker.health().is_usable() {
        assert!(
            Instant::now() < deadline,
            "{adapter}: still usable {:?} after the server stopped",
            ctx.patience()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{adapter}: health after the stop: {}", broker.health());
    // Closing must not hang on a server that is gone; its outcome is not
    // the point here.
    let closed = tokio::time::timeout(Duration::from_secs(30), broker.close()).await;
    assert!(closed.is_ok(), "{adapter}: close hung on a stopped server");
}

/// Waits until the exporter holds exactly one span of each name in `names`,
/// all of one trace (progress-based, bounded by `patience`), and returns
/// them by name.
async fn wait_for_trace(names: &[String], patience: Duration) -> HashMap<String, SpanData> {
    let exporter = EXPORTER.get().expect("installed in main");
    let deadline = Instant::now() + patience;
    loop {
        let spans = exporter.get_finished_spans().expect("exporter readable");
        let first = &names[0];
        let roots: Vec<&SpanData> = spans.iter().filter(|s| s.name == *first).collect();
        assert!(roots.len() <= 1, "{first} exported {} times", roots.len());
        if let Some(root) = roots.first() {
            let trace: TraceId = root.span_context.trace_id();
            let in_trace: Vec<&SpanData> = spans
                .iter()
                .filter(|s| s.span_context.trace_id() == trace)
                .collect();
            let mut by_name = HashMap::new();
            for span in &in_trace {
                assert!(
                    names.contains(&span.name.to_string()),
                    "unexpected span {} in the flow's trace",
                    span.name
                );
                let earlier = by_name.insert(span.name.to_string(), (*span).clone());
                assert!(earlier.is_none(), "{} exported twice", span.name);
            }
            if by_name.len() == names.len() {
                return by_name;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the flow's spans were not all exported within {patience:?}: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn attributes(span: &SpanData) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.as_str().to_owned(), kv.value.as_str().into_owned()))
        .collect()
}
