//! Helpers shared by the integration tests.

use courier_core::Message;
use courier_core::runtime::{self, Handler};
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
