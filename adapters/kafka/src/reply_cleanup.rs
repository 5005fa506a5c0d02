//! Closing a connection's reply path: its reader thread stops, and its
//! reply topic is deleted where configured.

use std::time::Duration;

use courier_core::{Error, Result};

use crate::request::Inbox;
use crate::topics::Topics;

/// How long closing waits for the reply reader thread to end: it polls in
/// steps of 100 ms, so it ends well within this unless rdkafka is stuck.
pub(crate) const READER_STOP: Duration = Duration::from_secs(5);

impl Inbox {
    /// Stops reading the reply topic (waiting requests see the reply path
    /// closed), waits up to `bound` for the reader thread to end, then
    /// deletes the reply topic if `delete_topic`. Does nothing when no
    /// request was ever sent.
    ///
    /// A topic that could not be deleted (the broker is unreachable, or
    /// refuses) is logged as a warning and does not fail the close: every
    /// resource of the connection is released all the same, and the topic
    /// holds nothing anyone waits for.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] naming `close` when the reader thread did not end
    /// within `bound` (the topic is still deleted).
    pub(crate) async fn close(
        &self,
        topics: &Topics,
        delete_topic: bool,
        bound: Duration,
    ) -> Result<()> {
        let Some(started) = self.started() else {
            return Ok(());
        };
        self.stop();
        let reader_ended = started
            .reader_ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let joined = match reader_ended {
            Some(ended) => match tokio::time::timeout(bound, ended).await {
                Ok(_) => Ok(()),
                Err(_) => {
                    tracing::warn!(after = ?bound, "the reply reader thread did not stop");
                    Err(Error::Timeout {
                        operation: "close",
                        after: bound,
                    })
                }
            },
            None => Ok(()),
        };
        if !delete_topic {
            return joined;
        }
        match topics.delete(&started.topic).await {
            Ok(()) => tracing::debug!(topic = %started.topic, "reply topic deleted"),
            Err(e) => tracing::warn!(
                topic = %started.topic,
                error = %e,
                "the reply topic was not deleted; remove it by hand or let retention do it"
            ),
        }
        joined
    }
}
