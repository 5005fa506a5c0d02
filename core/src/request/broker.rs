//! Request/reply through a [`Broker`], whatever its adapter.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{RequestError, Requester};
use crate::error::Error;
use crate::message::Message;
use crate::pubsub::Broker;

impl Broker {
    fn request_path(&self) -> Result<std::sync::Arc<dyn Requester>, Error> {
        self.requester().ok_or(Error::Unsupported {
            broker: self.name(),
            feature: "request/reply",
        })
    }

    /// Publishes `message` as a request to `topic` and waits at most
    /// `timeout` for the reply; see [`crate::request`].
    ///
    /// # Errors
    ///
    /// As [`Requester::request`]; [`RequestError::Transport`] with
    /// [`Error::Unsupported`] when the adapter offers no request/reply.
    ///
    /// # Cancel safety
    ///
    /// As [`Requester::request`]: dropping the future stops waiting.
    pub async fn request(
        &self,
        topic: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        self.request_path()?.request(topic, message, timeout).await
    }

    /// Sends `body` as a JSON request to `topic` and decodes the JSON reply
    /// into `Resp`.
    ///
    /// # Errors
    ///
    /// As [`Broker::request`], and [`RequestError::Codec`] when the body
    /// does not encode or the reply does not decode.
    ///
    /// # Cancel safety
    ///
    /// As [`Broker::request`].
    pub async fn request_json<Req, Resp>(
        &self,
        topic: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, RequestError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        super::request_json(self, topic, body, timeout).await
    }

    /// Replies that arrived after their requester stopped waiting; see
    /// [`Requester::late_replies`].
    pub fn late_replies(&self) -> u64 {
        self.requester().map_or(0, |r| r.late_replies())
    }
}

#[async_trait]
impl Requester for Broker {
    async fn request(
        &self,
        topic: &str,
        message: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        Broker::request(self, topic, message, timeout).await
    }

    async fn reply(&self, request: &Message, reply: Message) -> crate::Result<()> {
        self.request_path()?.reply(request, reply).await
    }

    fn late_replies(&self) -> u64 {
        Broker::late_replies(self)
    }
}
