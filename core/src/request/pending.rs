//! The requests a requester waits for, matched to replies by request id.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use foldhash::fast::RandomState;
use tokio::sync::oneshot;

use super::headers::REQUEST_ID;
use crate::message::Message;

/// The requests waiting, by request id (hashed with foldhash: ids are
/// courier's own, and every request inserts and removes one).
type Waiting = HashMap<Arc<str>, oneshot::Sender<Answer>, RandomState>;

/// The requests of one requester still waiting for a reply: adapters
/// register each request before sending it and hand every message arriving
/// at the requester's reply address to [`PendingReplies::deliver`].
///
/// A reply nobody waits for (its request timed out or was dropped, or it is
/// a duplicate) is dropped and counted in [`PendingReplies::late`].
#[derive(Default)]
pub struct PendingReplies {
    /// Keyed by request id, shared with the [`PendingReply`] (one copy of
    /// the id per request).
    waiting: Mutex<Waiting>,
    late: AtomicU64,
    /// The number of the next request id [`PendingReplies::next_id`] gives.
    issued: AtomicU64,
}

impl fmt::Debug for PendingReplies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingReplies")
            .field("waiting", &self.waiting().len())
            .field("late", &self.late())
            .finish()
    }
}

impl PendingReplies {
    /// No request waiting.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request id no earlier request of this requester had: a counter,
    /// for adapters whose reply address carries the id (it only needs to be
    /// unique within the address's inbox).
    pub fn next_id(&self) -> String {
        self.issued.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// Waits for the reply to request `id`. Dropping the returned
    /// [`PendingReply`] stops waiting: a reply arriving afterwards counts as
    /// late.
    pub fn register(self: &Arc<Self>, id: &str) -> PendingReply {
        let (tx, rx) = oneshot::channel();
        let id: Arc<str> = id.into();
        self.waiting().insert(id.clone(), tx);
        PendingReply {
            owner: self.clone(),
            id,
            rx,
        }
    }

    /// Hands `reply` to the request it answers. Returns `false`, and counts
    /// the reply as late, when no request with its id is waiting.
    pub fn deliver(&self, reply: Message) -> bool {
        let sender = reply
            .header(REQUEST_ID)
            .and_then(|id| self.waiting().remove(id));
        self.hand_over(sender, reply)
    }

    /// Hands `reply` to the request with id `id`, for adapters whose reply
    /// address carries the request id (so the reply need not carry it in
    /// [`REQUEST_ID`]). Returns whether a request was waiting for it; if
    /// not, the reply is counted as late.
    pub fn deliver_to(&self, id: &str, reply: Message) -> bool {
        let sender = self.waiting().remove(id);
        self.hand_over(sender, reply)
    }

    fn hand_over(&self, sender: Option<oneshot::Sender<Answer>>, reply: Message) -> bool {
        let delivered = sender.is_some_and(|tx| tx.send(Answer::Reply(reply)).is_ok());
        if !delivered {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
        delivered
    }

    /// Tells request `id` that the broker found nobody to receive it
    /// (NATS's no-responders status). Returns `false` when it no longer
    /// waits.
    pub fn refuse(&self, id: &str) -> bool {
        let sender = self.waiting().remove(id);
        sender.is_some_and(|tx| tx.send(Answer::NoResponders).is_ok())
    }

    /// Replies dropped because nobody waited for them any more.
    pub fn late(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// Ends every waiting request (its [`PendingReply::reply`] yields
    /// `None`): for adapters whose reply path ended.
    pub fn close_all(&self) {
        self.waiting().clear();
    }

    /// Requests currently waiting.
    pub fn in_flight(&self) -> usize {
        self.waiting().len()
    }
}

/// What a waiting request learns.
#[derive(Debug)]
#[non_exhaustive]
pub enum Answer {
    /// Its reply ([`PendingReplies::deliver`]).
    Reply(Message),
    /// The broker found nobody to receive it ([`PendingReplies::refuse`]).
    NoResponders,
}

/// One request waiting for its reply; see [`PendingReplies::register`].
#[derive(Debug)]
pub struct PendingReply {
    owner: Arc<PendingReplies>,
    id: Arc<str>,
    rx: oneshot::Receiver<Answer>,
}

impl PendingReply {
    /// The answer, or `None` when the requester's reply path closed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops waiting; the reply, if it comes, counts
    /// as late.
    pub async fn reply(mut self) -> Option<Answer> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        self.owner.waiting().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::headers;
    use std::time::Duration;

    #[tokio::test]
    async fn replies_reach_their_own_request_and_late_ones_are_counted() {
        let pending = PendingReplies::new();
        let (a, req_a) = headers::prepare(Message::new("a"), "x", Duration::from_secs(1));
        let (b, req_b) = headers::prepare(Message::new("b"), "x", Duration::from_secs(1));
        let wait_a = pending.register(&a);
        let wait_b = pending.register(&b);
        assert!(pending.deliver(headers::success(&req_b, Message::new("B"))));
        assert!(pending.deliver(headers::success(&req_a, Message::new("A"))));
        for (wait, expected) in [(wait_a, b"A"), (wait_b, b"B")] {
            match wait.reply().await {
                Some(Answer::Reply(reply)) => assert_eq!(reply.payload().as_ref(), expected),
                other => panic!("{other:?}"),
            }
        }

        let (c, req_c) = headers::prepare(Message::new("c"), "x", Duration::from_secs(1));
        drop(pending.register(&c));
        assert_eq!(pending.in_flight(), 0);
        assert!(!pending.deliver(headers::success(&req_c, Message::new("C"))));
        assert_eq!(pending.late(), 1);

        // Matched by the id its address carried, without the header.
        let (e, _) = headers::prepare(Message::new("e"), "x", Duration::from_secs(1));
        let wait_e = pending.register(&e);
        assert!(pending.deliver_to(&e, Message::new("E")));
        match wait_e.reply().await {
            Some(Answer::Reply(reply)) => assert_eq!(reply.payload().as_ref(), b"E"),
            other => panic!("{other:?}"),
        }
        assert!(!pending.deliver_to(&e, Message::new("E again")));
        assert_eq!(pending.late(), 2);

        let (d, _) = headers::prepare(Message::new("d"), "x", Duration::from_secs(1));
        let wait_d = pending.register(&d);
        assert!(pending.refuse(&d));
        assert!(matches!(wait_d.reply().await, Some(Answer::NoResponders)));
    }
}
