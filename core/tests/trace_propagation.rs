//! W3C trace context through the in-memory broker without OpenTelemetry:
//! consume -> publish a follow-up -> consume keeps one trace id, with a new
//! span id at every hop; a publish outside any trace writes no header.

use std::time::Duration;

use courier_core::request::RequestError;
use courier_core::runtime::Consumer;
use courier_core::telemetry::{TRACEPARENT, TraceContext};
use courier_core::{Broker, Message, Subscription};
use courier_memory::MemoryBroker;
use tokio::sync::mpsc;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_carries_the_trace_of_the_message_that_caused_it() {
    let broker = MemoryBroker::new().into_broker();
    // The first handler reports the trace context it runs in, and publishes
    // a follow-up.
    let (following_up, mut contexts_rx) = common::publishing_follow_ups(broker.clone(), "invoices");
    let first = Consumer::builder(
        &broker,
        Subscription::new("orders", "billing"),
        following_up,
    )
    .start()
    .await
    .unwrap();
    let (forwarding, mut invoices) = common::forwarding();
    let second = Consumer::builder(&broker, Subscription::new("invoices", "mailer"), forwarding)
        .start()
        .await
        .unwrap();
    let mut orders = broker_subscribe(&broker, "orders", "audit").await;

    // Outside any trace, a publish names no parent; the consumer starts the
    // trace and its follow-up carries it.
    broker
        .publish("orders", Message::new("order"))
        .await
        .unwrap();
    let order = next(&mut orders).await;
    assert_eq!(order.message().header(TRACEPARENT), None);
    order.ack().await.unwrap();
    let handler = recv(&mut contexts_rx)
        .await
        .expect("the handler runs in a trace");
    let invoice = recv(&mut invoices).await;
    let followed = TraceContext::from_message(&invoice).expect("the follow-up has a traceparent");
    assert_eq!(
        followed.trace_id(),
        handler.trace_id(),
        "one trace across the flow"
    );
    assert_ne!(
        followed.span_id(),
        handler.span_id(),
        "the publish is a span of its own"
    );

    // A message that arrives in a trace: the handler, and so the follow-up,
    // join it, each hop with a span id of its own.
    let upstream = TraceContext::new_root();
    let traced = Message::new("order")
        .with_header(TRACEPARENT, upstream.traceparent())
        .unwrap();
    broker.publish("orders", traced).await.unwrap();
    next(&mut orders).await.ack().await.unwrap();
    let handler = recv(&mut contexts_rx)
        .await
        .expect("the handler runs in a trace");
    assert_eq!(handler.trace_id(), upstream.trace_id());
    assert_ne!(handler.span_id(), upstream.span_id());
    let followed = TraceContext::from_message(&recv(&mut invoices).await).unwrap();
    assert_eq!(
        followed.trace_id(),
        upstream.trace_id(),
        "one trace across the flow"
    );
    assert!(followed.is_sampled());
    assert!(
        ![upstream.span_id(), handler.span_id()].contains(&followed.span_id()),
        "every hop names a span of its own"
    );

    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

async fn next(stream: &mut courier_core::DeliveryStream) -> courier_core::Delivery {
    tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(stream))
        .await
        .expect("a delivery in time")
        .expect("open stream")
        .expect("no stream error")
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("in time")
        .expect("open channel")
}

#[tokio::test]
async fn a_message_that_carries_a_trace_context_keeps_it() {
    let broker = MemoryBroker::new().into_broker();
    let mut stream = broker_subscribe(&broker, "t", "g").await;
    let created = TraceContext::new_root().with_state("vendor=1");
    let mut message = Message::new("x");
    for (name, value) in [
        ("traceparent", created.traceparent()),
        ("tracestate", "vendor=1".to_owned()),
    ] {
        message = message.with_header(name, value).unwrap();
    }
    broker.publish("t", message).await.unwrap();
    let delivery = futures::StreamExt::next(&mut stream)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        TraceContext::from_message(delivery.message()),
        Some(created)
    );
    delivery.ack().await.unwrap();
}

async fn broker_subscribe(
    broker: &Broker,
    topic: &str,
    group: &str,
) -> courier_core::DeliveryStream {
    broker
        .subscribe(Subscription::new(topic, group))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_request_carries_the_trace_it_is_made_in() {
    let broker = MemoryBroker::new().into_broker();
    let mut requests = broker_subscribe(&broker, "stock", "responders").await;

    // In a trace: the request names a span of its own in that trace.
    let upstream = TraceContext::new_root();
    let asking = tokio::spawn({
        let broker = broker.clone();
        upstream.clone().scope(async move {
            broker
                .request("stock", Message::new("sku-1"), Duration::from_millis(300))
                .await
        })
    });
    let request = next(&mut requests).await;
    let carried =
        TraceContext::from_message(request.message()).expect("the request has a traceparent");
    assert_eq!(carried.trace_id(), upstream.trace_id());
    assert_ne!(carried.span_id(), upstream.span_id());
    request.ack().await.unwrap();
    // Nobody answers: a timeout, as asked.
    let outcome = asking.await.unwrap();
    assert!(
        matches!(outcome, Err(RequestError::Timeout { .. })),
        "{outcome:?}"
    );

    // Outside any trace, no header.
    let asking = tokio::spawn({
        let broker = broker.clone();
        async move {
            broker
                .request("stock", Message::new("sku-2"), Duration::from_millis(300))
                .await
        }
    });
    let request = next(&mut requests).await;
    assert_eq!(request.message().header(TRACEPARENT), None);
    request.ack().await.unwrap();
    let outcome = asking.await.unwrap();
    assert!(
        matches!(outcome, Err(RequestError::Timeout { .. })),
        "{outcome:?}"
    );
}
