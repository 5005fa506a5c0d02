//! Replies handed to their waiting requests straight from the inbox
//! subscription's wake, with no task in between.
//!
//! The subscription's channel wakes a [`ReplyFeed`] instead of a reader
//! task: its wake drains the channel there and then (on the thread of the
//! client's connection task, which just put the reply in) and resolves the
//! waiting requests, as async-nats's own `request` does with its
//! multiplexer. Replies nobody waits for still reach
//! [`PendingReplies::deliver_to`], which counts them as late.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use async_nats::StatusCode;
use courier_core::request::PendingReplies;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::compact::decode_with_subject;

/// The inbox subscription and the requests its replies go to; its wake
/// drains the subscription.
#[derive(Debug)]
pub(crate) struct ReplyFeed {
    /// `None` once the subscription ended or the connection shut down.
    replies: Mutex<Option<async_nats::Subscriber>>,
    pending: Arc<PendingReplies>,
    /// Where the request id starts in a reply subject
    /// (`<prefix>.<request id>[.<fields>]`).
    id_start: usize,
    /// Set by every wake; whoever holds `replies` drains until it is clear,
    /// so a wake that finds the lock taken is never lost.
    woken: AtomicBool,
    /// Cancelled once the subscription ended.
    ended: CancellationToken,
}

impl ReplyFeed {
    /// Starts feeding the replies of `replies` (subscribed to
    /// `<prefix>.*`) to `pending`: drains what is there and leaves the
    /// feed's waker with the subscription.
    pub(crate) fn start(
        replies: async_nats::Subscriber,
        prefix_len: usize,
        pending: Arc<PendingReplies>,
    ) -> Arc<Self> {
        let feed = Arc::new(ReplyFeed {
            replies: Mutex::new(Some(replies)),
            pending,
            id_start: prefix_len + 1,
            woken: AtomicBool::new(false),
            ended: CancellationToken::new(),
        });
        feed.clone().wake();
        feed
    }

    /// Waits until the subscription ends (the client closed it).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn ended(&self) {
        self.ended.cancelled().await;
    }

    /// Drops the subscription and ends every waiting request.
    pub(crate) fn stop(&self) {
        let replies = self.replies.lock().take();
        drop(replies);
        self.pending.close_all();
    }

    /// Drains the subscription while wakes keep coming; returns at once
    /// when another thread drains (it sees this wake's flag).
    fn drain_while_woken(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        loop {
            let Some(mut replies) = self.replies.try_lock() else {
                return;
            };
            while self.woken.swap(false, Ordering::SeqCst) {
                self.drain(&mut replies);
            }
            drop(replies);
            if !self.woken.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Hands every reply ready in `replies` to its request, and leaves this
    /// feed's waker with the subscription.
    fn drain(self: &Arc<Self>, replies: &mut Option<async_nats::Subscriber>) {
        let Some(subscription) = replies.as_mut() else {
            return;
        };
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        // Unconstrained: out of the task's cooperative budget, the channel
        // would answer `Pending` and wake this feed at once, from inside
        // the drain, again and again.
        let ended = pin!(tokio::task::unconstrained(std::future::poll_fn(|cx| {
            loop {
                match subscription.poll_next_unpin(cx) {
                    Poll::Ready(Some(reply)) => self.hand_over(reply),
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })))
        .poll(&mut cx)
        .is_ready();
        if ended {
            *replies = None;
            self.pending.close_all();
            self.ended.cancel();
        }
    }

    fn hand_over(&self, reply: async_nats::Message) {
        // The reply subject is `<prefix>.<request id>`, perhaps followed by
        // a token of the request's fields: the id travels there, not in a
        // header.
        let Some(id) = reply
            .subject
            .get(self.id_start..)
            .map(|rest| rest.split_once('.').map_or(rest, |(id, _)| id))
        else {
            return;
        };
        if reply.status == Some(StatusCode::NO_RESPONDERS) {
            self.pending.refuse(id);
            return;
        }
        // A courier reply's fields travel in its own reply subject or in a
        // header.
        let fields = reply.reply.as_ref().map(|subject| subject.as_str());
        match decode_with_subject(reply.headers.as_ref(), fields, reply.payload) {
            Ok(message) => {
                self.pending.deliver_to(id, message);
            }
            Err(e) => tracing::warn!(error = %e, "undecodable reply dropped"),
        }
    }
}

impl Wake for ReplyFeed {
    fn wake(self: Arc<Self>) {
        self.drain_while_woken();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.drain_while_woken();
    }
}
