//! Helpers shared by the integration tests.

use courier_core::runtime::{self, Envelope, Handler};
use courier_core::telemetry::TraceContext;
use courier_core::{Broker, Bytes, Message};
use tokio::sync::mpsc;

/// A handler that passes every message it gets to the returned receiver.
pub(crate) fn forwarding() -> (impl Handler, mpsc::UnboundedReceiver<Message>) {
    let (seen, seen_rx) = mpsc::unbounded_channel();
    let handler = runtime::raw(move |message: Message| {
        let seen = seen.clone();
        async move {
            seen.send(message)?;
            Ok(())
        }
    });
    (handler, seen_rx)
}

/// A handler that reports the trace context it runs in, then publishes a
/// follow-up of its message to `topic` through `broker`.
pub(crate) fn publishing_follow_ups(
    broker: Broker,
    topic: &'static str,
) -> (impl Handler, mpsc::UnboundedReceiver<Option<TraceContext>>) {
    let (contexts, contexts_rx) = mpsc::unbounded_channel();
    let handler = runtime::raw_envelope(move |envelope: Envelope<Bytes>| {
        let (broker, contexts) = (broker.clone(), contexts.clone());
        async move {
            contexts.send(TraceContext::current())?;
            let next = envelope.meta.follow_up(Message::new("follow-up"));
            broker.publish(topic, next).await?;
            Ok(())
        }
    });
    (handler, contexts_rx)
}
