//! The outbox keeps the trace a row was written in: a handler enqueues a
//! follow-up in its transaction, the relay publishes it later, outside any
//! trace, and the published message still names the handler's trace.

use std::sync::Arc;
use std::time::Duration;

use courier_core::runtime::{self, Consumer, Envelope};
use courier_core::telemetry::{TRACEPARENT, TraceContext};
use courier_core::{Bytes, DeliveryStream, Message, Publisher, Subscriber, Subscription};
use courier_memory::MemoryBroker;
use courier_outbox::RelayConfig;
use courier_outbox::sqlite::SqliteOutbox;
use futures::StreamExt;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);

async fn next(stream: &mut DeliveryStream) -> Message {
    let delivery = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a delivery in time")
        .expect("open stream")
        .expect("no stream error");
    let message = delivery.message().clone();
    delivery.ack().await.expect("ack");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_written_in_a_trace_is_published_in_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = SqliteOutbox::connect(&dir.path().join("outbox.db"))
        .await
        .expect("open");
    outbox.migrate().await.expect("migrate");
    let broker = MemoryBroker::new();
    let mut invoices = broker
        .subscribe(Subscription::new("invoices", "mailer"))
        .await
        .unwrap();

    let (contexts, mut contexts_rx) = mpsc::unbounded_channel::<Option<TraceContext>>();
    let consumer = Consumer::builder(
        Arc::new(broker.clone()),
        Subscription::new("orders", "billing"),
        runtime::raw_envelope({
            let outbox = outbox.clone();
            move |envelope: Envelope<Bytes>| {
                let (outbox, contexts) = (outbox.clone(), contexts.clone());
                async move {
                    contexts.send(TraceContext::current())?;
                    let mut tx = outbox.pool().begin().await?;
                    let next = envelope.meta.follow_up(Message::new("invoice"));
                    outbox.enqueue(&mut tx, "invoices", next).await?;
                    tx.commit().await?;
                    Ok(())
                }
            }
        }),
    )
    .start()
    .await
    .unwrap();
    broker
        .publish("orders", Message::new("order"))
        .await
        .unwrap();
    let handler = tokio::time::timeout(WAIT, contexts_rx.recv())
        .await
        .expect("handled in time")
        .unwrap()
        .expect("the handler runs in a trace");

    // A row written outside any trace stays without one.
    let mut tx = outbox.pool().begin().await.unwrap();
    outbox
        .enqueue(&mut tx, "invoices", Message::new("untraced"))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let relay = outbox
        .relay(Arc::new(broker.clone()))
        .config(RelayConfig::default().poll_interval(Duration::from_millis(20)))
        .start();
    let mut got = [next(&mut invoices).await, next(&mut invoices).await];
    got.sort_by_key(|m| m.payload().clone());
    let [invoice, untraced] = got;
    assert_eq!(invoice.payload().as_ref(), b"invoice");
    let carried = TraceContext::from_message(&invoice).expect("the row kept its trace");
    assert_eq!(carried.trace_id(), handler.trace_id());
    assert_eq!(untraced.header(TRACEPARENT), None);
    relay.shutdown().await;
    consumer.shutdown().await.unwrap();
}
