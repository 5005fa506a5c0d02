//! A connection's reply inbox for its requests.

use std::sync::Arc;

use async_nats::StatusCode;
use courier_core::Result;
use courier_core::adapter::TaskSet;
use courier_core::request::PendingReplies;
use futures::StreamExt;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::compact::decode;
use crate::error::op_error;

/// A connection's reply inbox: one core NATS subscription to
/// `<inbox>.*`, started on the connection's first request; each request
/// gets the reply subject `<inbox>.<request id>`.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    started: OnceCell<(String, Arc<PendingReplies>)>,
}

impl Inbox {
    /// Replies that came after their request had given up.
    pub(crate) fn late_replies(&self) -> u64 {
        self.started.get().map_or(0, |(_, pending)| pending.late())
    }

    pub(crate) async fn get(
        &self,
        client: &async_nats::Client,
        shutdown: &CancellationToken,
        tasks: &TaskSet,
    ) -> Result<&(String, Arc<PendingReplies>)> {
        self.started
            .get_or_try_init(|| async {
                let prefix = client.new_inbox();
                let mut replies = client
                    .subscribe(format!("{prefix}.*"))
                    .await
                    .map_err(|e| op_error("subscribe to the reply inbox", e))?;
                let pending = PendingReplies::new();
                let feed = pending.clone();
                let shutdown = shutdown.clone();
                let id_start = prefix.len() + 1;
                tasks.spawn("reply inbox reader", async move {
                    // One wait for the shutdown for the reader's life, looked
                    // at only when no reply is ready (a fresh wait per reply
                    // would register and unregister a waiter every time).
                    let stopped = shutdown.cancelled_owned();
                    tokio::pin!(stopped);
                    loop {
                        let reply = tokio::select! {
                            biased;
                            reply = replies.next() => match reply {
                                Some(reply) => reply,
                                None => break,
                            },
                            () = &mut stopped => break,
                        };
                        if reply.status == Some(StatusCode::NO_RESPONDERS) {
                            if let Some(id) = reply.subject.get(id_start..) {
                                feed.refuse(id);
                            }
                            continue;
                        }
                        // The reply subject is `<prefix>.<request id>`: the
                        // id travels there, not in a header.
                        let Some(id) = reply.subject.get(id_start..) else {
                            continue;
                        };
                        match decode(reply.headers.as_ref(), reply.payload) {
                            Ok(message) => {
                                feed.deliver_to(id, message);
                            }
                            Err(e) => tracing::warn!(error = %e, "undecodable reply dropped"),
                        }
                    }
                    feed.close_all();
                });
                Ok((prefix, pending))
            })
            .await
    }
}
