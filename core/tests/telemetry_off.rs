//! With telemetry turned off, publishes carry no trace context and the
//! runtime still handles messages. (A binary of its own: the switch is
//! process-wide.)

use std::time::Duration;

use courier_core::runtime::{self, Consumer};
use courier_core::telemetry::{self, TRACEPARENT};
use courier_core::{Message, Subscription};
use courier_memory::MemoryBroker;

#[tokio::test]
async fn off_means_no_trace_context_and_handling_goes_on() {
    telemetry::set_enabled(false);
    assert!(!telemetry::is_enabled());
    let broker = MemoryBroker::new().into_broker();
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = Consumer::builder(
        &broker,
        Subscription::new("orders", "billing"),
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
    broker.publish("orders", Message::new("x")).await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
        .await
        .expect("handled")
        .unwrap();
    assert_eq!(message.header(TRACEPARENT), None);
    assert_eq!(consumer.shutdown().await.unwrap().handled, 1);
}
