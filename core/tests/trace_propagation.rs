//! W3C trace context through the in-memory broker without OpenTelemetry:
//! publish -> consume -> publish a follow-up -> consume keeps one trace id,
//! with a new span id at every hop.

use std::time::Duration;

use courier_core::runtime::{self, Consumer, Envelope};
use courier_core::telemetry::{TRACEPARENT, TraceContext};
use courier_core::{Broker, Bytes, Message, Subscription};
use courier_memory::MemoryBroker;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_carries_the_trace_of_the_message_that_caused_it() {
    let broker = MemoryBroker::new().into_broker();
    let (seen, mut seen_rx) = mpsc::unbounded_channel::<Message>();
    let first = Consumer::builder(
        &broker,
        Subscription::new("orders", "billing"),
        runtime::raw_envelope({
            let broker = broker.clone();
            move |envelope: Envelope<Bytes>| {
                let broker = broker.clone();
                async move {
                    let next = envelope.meta.follow_up(Message::new("invoice"));
                    broker.publish("invoices", next).await?;
                    Ok(())
                }
            }
        }),
    )
    .start()
    .await
    .unwrap();
    let second = Consumer::builder(
        &broker,
        Subscription::new("invoices", "mailer"),
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
    .unwrap();

    // A message published outside any trace starts one.
    let mut orders = broker_subscribe(&broker, "orders", "audit").await;
    broker
        .publish("orders", Message::new("order"))
        .await
        .unwrap();
    let order = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut orders),
    )
    .await
    .expect("the order arrives")
    .unwrap()
    .unwrap();
    let sent = TraceContext::from_message(order.message()).expect("publish wrote a traceparent");
    assert_eq!(
        order.message().header(TRACEPARENT),
        Some(sent.traceparent().as_str())
    );
    order.ack().await.unwrap();

    let invoice = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
        .await
        .expect("the follow-up arrives")
        .unwrap();
    let followed = TraceContext::from_message(&invoice).expect("the follow-up has a traceparent");
    assert_eq!(
        followed.trace_id(),
        sent.trace_id(),
        "one trace across the flow"
    );
    assert_ne!(
        followed.span_id(),
        sent.span_id(),
        "the follow-up names a span of its own"
    );
    assert!(followed.is_sampled());

    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
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
