//! [`Request`]: one attempt at handling one delivered message.

use std::sync::Arc;

use crate::message::Message;

/// One attempt at handling one delivered message: the message and where it
/// came from. Cheap to copy; borrowed from the runtime for the attempt.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    message: &'a Message,
    topic: &'a str,
    group: &'a str,
    /// The runtime's own copies of topic and group, which an owned
    /// [`Meta`](super::Meta) shares instead of copying the names.
    shared: Option<(&'a Arc<str>, &'a Arc<str>)>,
    attempt: u32,
    delivery_count: Option<u32>,
}

impl<'a> Request<'a> {
    /// A request, for the runtime and for testing handlers and middleware.
    pub fn new(message: &'a Message, topic: &'a str, group: &'a str) -> Self {
        Request {
            message,
            topic,
            group,
            shared: None,
            attempt: 1,
            delivery_count: None,
        }
    }

    /// A request of the runtime's, whose topic and group an owned
    /// [`Meta`](super::Meta) shares.
    pub(crate) fn shared(message: &'a Message, topic: &'a Arc<str>, group: &'a Arc<str>) -> Self {
        Request {
            shared: Some((topic, group)),
            ..Request::new(message, topic, group)
        }
    }

    /// Topic and group as shared strings: the runtime's, or new copies.
    pub(crate) fn shared_names(&self) -> (Arc<str>, Arc<str>) {
        match self.shared {
            Some((topic, group)) => (topic.clone(), group.clone()),
            None => (self.topic.into(), self.group.into()),
        }
    }

    /// Sets the attempt number (1 for the first attempt).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the broker's delivery count.
    pub fn with_delivery_count(mut self, count: Option<u32>) -> Self {
        self.delivery_count = count;
        self
    }

    /// The message.
    pub fn message(&self) -> &'a Message {
        self.message
    }

    /// The topic it was consumed from.
    pub fn topic(&self) -> &'a str {
        self.topic
    }

    /// The consumer group.
    pub fn group(&self) -> &'a str {
        self.group
    }

    /// Which attempt this is within the current delivery, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many times the broker has delivered the message, when it tells;
    /// see [`Delivery::delivery_count`](crate::Delivery::delivery_count).
    pub fn delivery_count(&self) -> Option<u32> {
        self.delivery_count
    }
}
