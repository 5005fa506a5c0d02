//! Settling deliveries of the in-process broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use courier_core::adapter::Acknowledger;
use courier_core::{DeadLetter, Message, Nack, Result, async_trait};
use futures::task::AtomicWaker;

use crate::state::{Group, Pending, State};

/// What one stream's deliveries share: where they came from and how many
/// are unsettled (flow control). One `Arc` per delivery keeps it cheap.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) state: Arc<State>,
    pub(crate) group: Arc<Group>,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) prefetch: usize,
    pub(crate) waker: AtomicWaker,
}

impl Flow {
    fn release(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == self.prefetch {
            self.waker.wake();
        }
    }
}

/// Settles one delivery: an ack forgets the message, a nack or an abandoned
/// delivery puts it back at the head of its group's queue.
#[derive(Debug)]
pub(crate) struct MemoryAcker {
    pub(crate) flow: Arc<Flow>,
    pub(crate) deliveries: u32,
}

impl MemoryAcker {
    fn requeue(&self, message: &Message) {
        self.flow.group.requeue_front(std::iter::once(Pending {
            message: message.clone(),
            deliveries: self.deliveries,
        }));
    }

    fn requeue_after(&self, message: &Message, delay: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.requeue(message);
        };
        let group = self.flow.group.clone();
        let pending = Pending {
            message: message.clone(),
            deliveries: self.deliveries,
        };
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            group.requeue_front(std::iter::once(pending));
        });
    }
}

impl MemoryAcker {
    /// Appends the dead-letter copy to the dead-letter topic's groups. A
    /// full dead-letter group refuses at once: the message stays where it
    /// is, and the caller sees why.
    fn append_dead_letter(&self, message: &Message, dead_letter: &DeadLetter) -> Result<()> {
        let (topic, copy) =
            dead_letter.to_message(message, &self.flow.group.topic, &self.flow.group.name)?;
        let copy = vec![copy];
        let state = &self.flow.state;
        state.check_publish(&topic, &copy)?;
        state.try_append(&topic, copy).map_err(|full| {
            crate::state::queue_full(&topic, &full.group, state.config.max_queue_len)
        })
    }
}

#[async_trait]
impl Acknowledger for MemoryAcker {
    async fn ack(self: Box<Self>, message: &Message) -> Result<()> {
        self.ack_at_once(message);
        Ok(())
    }

    fn ack_at_once(&self, _message: &Message) -> bool {
        self.flow.group.settled();
        self.flow.release();
        true
    }

    async fn nack(self: Box<Self>, message: &Message, nack: Nack) -> Result<()> {
        let outcome = match nack {
            Nack::Requeue => {
                self.requeue(message);
                Ok(())
            }
            Nack::RequeueAfter(delay) => {
                self.requeue_after(message, delay);
                Ok(())
            }
            Nack::DeadLetter(dead_letter) => self
                .append_dead_letter(message, &dead_letter)
                .map(|()| self.flow.group.settled())
                .inspect_err(|_| self.requeue(message)),
            _ => {
                self.requeue(message);
                Ok(())
            }
        };
        self.flow.release();
        outcome
    }

    fn abandon(self: Box<Self>, message: &Message) {
        self.requeue(message);
        self.flow.release();
    }

    async fn publish_dead_letter(
        &self,
        message: &Message,
        dead_letter: &DeadLetter,
    ) -> Option<Result<()>> {
        Some(self.append_dead_letter(message, dead_letter))
    }
}
