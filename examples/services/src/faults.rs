//! A fault the scenarios and tests switch on: a consumer's ack lost after
//! its handler's effect, so the message is handled again (as after a
//! crash between the effect and the ack, or a connection lost before the
//! broker got the ack). The second handling must change nothing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use courier::MessageId;
use courier::async_trait;
use courier::runtime::{HandlerError, HandlerResult, Hook, HookLayer, Request};

use crate::timeline::Timeline;

/// Loses the ack of the next messages a consumer handles successfully,
/// once per message: the runtime then handles each of them again.
#[derive(Debug, Default)]
pub struct LostAcks {
    remaining: AtomicU64,
    lost: Mutex<HashSet<MessageId>>,
}

impl LostAcks {
    /// Loses the acks of the next `messages` messages handled successfully.
    pub fn lose_next(&self, messages: u64) {
        self.remaining.fetch_add(messages, Ordering::Relaxed);
    }

    /// How many acks it has lost.
    pub fn lost(&self) -> usize {
        self.lost.lock().map_or(0, |lost| lost.len())
    }

    /// The layer to put outermost on the consumer (outside its
    /// idempotency layer, which has then completed the key).
    /// `service` and `timeline` name it on the timeline.
    pub fn layer(
        self: &Arc<Self>,
        service: &'static str,
        timeline: Timeline,
    ) -> HookLayer<LostAckHook> {
        HookLayer::new(LostAckHook {
            acks: self.clone(),
            service,
            timeline,
        })
    }
}

/// The [`Hook`] of [`LostAcks::layer`].
#[derive(Debug)]
pub struct LostAckHook {
    acks: Arc<LostAcks>,
    service: &'static str,
    timeline: Timeline,
}

#[async_trait]
impl Hook for LostAckHook {
    async fn after(&self, request: &Request<'_>, outcome: HandlerResult) -> HandlerResult {
        let this = &self.acks;
        outcome?;
        let id = request.message().id();
        let lose = this
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !lose {
            return Ok(());
        }
        let first_time = this
            .lost
            .lock()
            .map(|mut lost| lost.insert(id.clone()))
            .unwrap_or(false);
        if !first_time {
            this.remaining.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.timeline.note(
            self.service,
            format!("the ack of message {id} is lost: it comes again"),
        );
        Err(HandlerError::transient("simulated fault: the ack was lost"))
    }
}
