//! Request/reply in process: requests go through the topic's groups like
//! any message; replies go straight into the requester's inbox.

use std::sync::Weak;
use std::time::Duration;

use courier_core::request::{self, RequestError, Requester, headers};
use courier_core::{Message, Result, async_trait};

use crate::MemoryBroker;
use crate::inbox::inboxes;

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
                // Checked above; the request id and deadline headers it
                // got since are courier's own and small.
                self.append(topic, vec![request])
                    .await
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
        self.handle.inbox.late_replies()
    }
}
