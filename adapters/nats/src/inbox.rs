//! A connection's reply inbox for its requests.

use std::sync::Arc;

use courier_core::Result;
use courier_core::adapter::TaskSet;
use courier_core::request::PendingReplies;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::error::op_error;
use crate::reply_feed::ReplyFeed;

/// A connection's reply inbox: one core NATS subscription to
/// `<inbox>.>`, started on the connection's first request; each request
/// gets the reply subject `<inbox>.<request id>`, followed by a token of
/// the request's fields when they travel there
/// ([`subject_fields`](crate::compact::subject_fields)).
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
                let replies = client
                    .subscribe(format!("{prefix}.>"))
                    .await
                    .map_err(|e| op_error("subscribe to the reply inbox", e))?;
                let pending = PendingReplies::new();
                // The feed's wake hands each reply over as it arrives; this
                // task only ends the feed when the connection shuts down.
                let feed = ReplyFeed::start(replies, prefix.len(), pending.clone());
                let shutdown = shutdown.clone();
                tasks.spawn("reply inbox shutdown", async move {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = feed.ended() => {}
                    }
                    feed.stop();
                });
                Ok((prefix, pending))
            })
            .await
    }
}
