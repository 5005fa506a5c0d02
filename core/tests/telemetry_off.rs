//! With telemetry turned off, even a follow-up published from a handler
//! carries no trace context, and the runtime still handles messages. (A
//! binary of its own: the switch is process-wide.)

use std::time::Duration;

use courier_core::runtime::Consumer;
use courier_core::telemetry::{self, TRACEPARENT};
use courier_core::{Message, Subscription};
use courier_memory::MemoryBroker;

mod common;

#[tokio::test]
async fn off_means_no_trace_context_and_handling_goes_on() {
    telemetry::set_enabled(false);
    assert!(!telemetry::is_enabled());
    let broker = MemoryBroker::new().into_broker();
    let (following_up, mut contexts_rx) = common::publishing_follow_ups(broker.clone(), "invoices");
    let first = Consumer::builder(
        &broker,
        Subscription::new("orders", "billing"),
        following_up,
    )
    .start()
    .await
    .unwrap();
    let (forwarding, mut seen_rx) = common::forwarding();
    let second = Consumer::builder(&broker, Subscription::new("invoices", "mailer"), forwarding)
        .start()
        .await
        .unwrap();
    broker.publish("orders", Message::new("x")).await.unwrap();
    let invoice = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
        .await
        .expect("handled")
        .unwrap();
    assert_eq!(invoice.header(TRACEPARENT), None);
    assert_eq!(contexts_rx.recv().await, Some(None), "no context while off");
    assert_eq!(first.shutdown().await.unwrap().handled, 1);
    assert_eq!(second.shutdown().await.unwrap().handled, 1);
}
