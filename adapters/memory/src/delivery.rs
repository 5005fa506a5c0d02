//! Settling deliveries of the in-process broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use courier_core::adapter::Acknowledger;
use courier_core::{Message, Nack, Result, async_trait};
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

#[async_trait]
impl Acknowledger for MemoryAcker {
    async fn ack(self: Box<Self>, _message: &Message) -> Result<()> {
        self.flow.group.settled();
        self.flow.release();
        Ok(())
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
            Nack::DeadLetter(dead_letter) => dead_letter
                .to_message(message, &self.flow.group.topic, &self.flow.group.name)
                .map_err(Into::into)
                .and_then(|(topic, copy)| {
                    let copy = vec![copy];
                    let state = &self.flow.state;
                    state.check_publish(&topic, &copy)?;
                    // A full dead-letter group refuses at once: the message
                    // stays where it is, and the caller sees why.
                    state.try_append(&topic, copy).map_err(|full| {
                        crate::state::queue_full(&topic, &full.group, state.config.max_queue_len)
                    })?;
                    self.flow.group.settled();
                    Ok(())
                })
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
}
