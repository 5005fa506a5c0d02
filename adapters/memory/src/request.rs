//! Request/reply in process: requests go through the topic's groups like
//! any message; replies go straight into the requester's inbox.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use courier_core::request::{self, PendingReplies, RequestError, Requester, headers};
use courier_core::{Message, MessageId, Result, async_trait};
use parking_lot::Mutex;

use crate::MemoryBroker;

/// Every inbox of the process, by name: a reply names its inbox, whichever
/// broker connection sends it.
fn inboxes() -> &'static Mutex<HashMap<String, Weak<PendingReplies>>> {
    static INBOXES: OnceLock<Mutex<HashMap<String, Weak<PendingReplies>>>> = OnceLock::new();
    INBOXES.get_or_init(Default::default)
}

/// A connection's inbox, registered on its first request.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    registered: OnceLock<(String, Arc<PendingReplies>)>,
}

impl Inbox {
    fn get(&self) -> &(String, Arc<PendingReplies>) {
        self.registered.get_or_init(|| {
            let name = format!("memory-inbox-{}", MessageId::new());
            let pending = PendingReplies::new();
            inboxes()
                .lock()
                .insert(name.clone(), Arc::downgrade(&pending));
            (name, pending)
        })
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        if let Some((name, _)) = self.registered.get() {
            inboxes().lock().remove(name);
        }
    }
}

#[async_trait]
impl Requester for MemoryBroker {
    /// Publishes the request to `topic`'s groups; a topic without any group
    /// is [`RequestError::NoResponders`].
    async fn request(
        &self,
        topic: &str,
        message: Message,
        timeout: Duration,
    ) -> std::result::Result<Message, RequestError> {
        self.check_open()?;
        self.state
            .check_publish(topic, std::slice::from_ref(&message))?;
        if !self.state.has_groups(topic) {
            return Err(RequestError::NoResponders {
                topic: topic.to_owned(),
            });
        }
        let (inbox, pending) = self.handle.inbox.get();
        request::exchange(
            pending,
            topic,
            inbox,
            message,
            timeout,
            |request| async move {
                self.publish_all(topic, vec![request])
                    .map_err(RequestError::Transport)
            },
        )
        .await
    }

    /// Hands the reply to the requester's inbox; a reply to a requester
    /// that is gone is dropped.
    async fn reply(&self, request: &Message, reply: Message) -> Result<()> {
        let inbox = headers::reply_address_of("memory", request)?;
        let pending = inboxes().lock().get(inbox).and_then(Weak::upgrade);
        if let Some(pending) = pending {
            pending.deliver(reply);
        }
        Ok(())
    }

    fn late_replies(&self) -> u64 {
        self.handle
            .inbox
            .registered
            .get()
            .map_or(0, |(_, pending)| pending.late())
    }
}
