//! The broker's state: topics, their history, and one queue per group.
//!
//! Locks are short and never nested the other way round: a topic lock may be
//! held while a group lock is taken, never the reverse. Wakers are woken after
//! the locks are released.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Waker;

use courier_core::{Message, Result, StartPosition};
use foldhash::fast::RandomState;
use parking_lot::{Mutex, RwLock};

use crate::config::MemoryConfig;
use crate::inbox::Inbox;

/// One connection to a broker's state: closing it ends its own streams and
/// publishers only.
#[derive(Debug, Default)]
pub(crate) struct Handle {
    pub(crate) closed: AtomicBool,
    /// Where replies to this connection's requests arrive.
    pub(crate) inbox: Inbox,
}

impl Handle {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// A message waiting in a group's queue, with how often it was handed out.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) message: Message,
    pub(crate) deliveries: u32,
}

#[derive(Debug, Default)]
pub(crate) struct GroupQueue {
    pub(crate) ready: VecDeque<Pending>,
    pub(crate) waiters: Vec<Waker>,
}

/// Publishers waiting for a full group to make room (see
/// [`MemoryConfig::max_queue_len`]).
#[derive(Debug, Default)]
pub(crate) struct Room {
    pub(crate) freed: tokio::sync::Notify,
    /// How many publishers wait: settlements notify only when some do.
    pub(crate) waiting: AtomicUsize,
}

/// A publish found a group of its topic full.
#[derive(Debug)]
pub(crate) struct Full {
    /// The messages, not appended.
    pub(crate) messages: Vec<Message>,
    pub(crate) group: Arc<str>,
}

/// A group of `topic` holds `limit` messages.
pub(crate) fn queue_full(topic: &str, group: &str, limit: usize) -> courier_core::Error {
    courier_core::Error::broker(
        "memory",
        "publish",
        courier_core::BrokerErrorKind::LimitReached,
        format!(
            "group {group:?} of topic {topic:?} holds {limit} messages \
             (max_queue_len); its consumers must settle some first"
        ),
    )
}

/// One consumer group of one topic: the messages it has not yet taken.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) name: Arc<str>,
    pub(crate) topic: Arc<str>,
    pub(crate) queue: Mutex<GroupQueue>,
    /// Open streams of the group: each holds at most its share of the
    /// group's messages, so one member cannot take a backlog the others
    /// could handle (see `subscriber::fair_take`).
    pub(crate) members: AtomicUsize,
    /// Messages taken out of `queue` and not yet settled or given back
    /// (a delayed requeue counts until the message is back in the queue).
    pub(crate) held: AtomicUsize,
    /// A member is waiting for its share to grow: settlements wake the
    /// group's waiters.
    pub(crate) starved: AtomicBool,
    /// The broker's waiting publishers.
    room: Arc<Room>,
}

impl Group {
    /// Puts messages back at the head of the queue, first one first.
    pub(crate) fn requeue_front(&self, pending: impl DoubleEndedIterator<Item = Pending>) {
        let waiters = {
            let mut q = self.queue.lock();
            for p in pending.rev() {
                q.ready.push_front(p);
                self.held.fetch_sub(1, Ordering::AcqRel);
            }
            // Every waiter is woken, a starved member included.
            self.starved.store(false, Ordering::Release);
            std::mem::take(&mut q.waiters)
        };
        waiters.into_iter().for_each(Waker::wake);
    }

    /// Counts messages taken out of the queue for delivery.
    pub(crate) fn taken(&self, count: usize) {
        self.held.fetch_add(count, Ordering::AcqRel);
    }

    /// One message taken out was settled for good: one fewer held, and a
    /// member waiting for its share may take more.
    pub(crate) fn settled(&self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
        if self.room.waiting.load(Ordering::Acquire) > 0 {
            self.room.freed.notify_waiters();
        }
        if self.starved.swap(false, Ordering::AcqRel) {
            let waiters = std::mem::take(&mut self.queue.lock().waiters);
            waiters.into_iter().for_each(Waker::wake);
        }
    }

    /// Messages waiting in the queue and messages out for delivery.
    pub(crate) fn backlog(&self) -> (usize, usize) {
        let ready = self.queue.lock().ready.len();
        (ready, self.held.load(Ordering::Acquire))
    }

    /// Registers a stream to be woken when messages arrive or the broker closes.
    pub(crate) fn register(q: &mut GroupQueue, waker: &Waker) {
        if !q.waiters.iter().any(|w| w.will_wake(waker)) {
            q.waiters.push(waker.clone());
        }
    }

    pub(crate) fn wake_all(&self) {
        let waiters = std::mem::take(&mut self.queue.lock().waiters);
        waiters.into_iter().for_each(Waker::wake);
    }
}

#[derive(Debug, Default)]
struct TopicState {
    history: VecDeque<Message>,
    groups: Vec<Arc<Group>>,
}

#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    state: Mutex<TopicState>,
}

/// Everything one broker instance holds.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) config: MemoryConfig,
    /// Hashed with foldhash: every publish and request looks its topic up.
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>, RandomState>>,
    pub(crate) room: Arc<Room>,
}

impl State {
    pub(crate) fn new(config: MemoryConfig) -> Self {
        State {
            config,
            topics: RwLock::new(HashMap::default()),
            room: Arc::default(),
        }
    }

    /// Wakes every waiting stream, so that streams of a closed handle end.
    pub(crate) fn wake_all(&self) {
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        for topic in topics {
            let groups = topic.state.lock().groups.clone();
            groups.iter().for_each(|g| g.wake_all());
        }
    }

    fn topic(&self, name: &str) -> Arc<Topic> {
        if let Some(t) = self.topics.read().get(name) {
            return t.clone();
        }
        self.topics
            .write()
            .entry(Arc::from(name))
            .or_insert_with_key(|name| {
                Arc::new(Topic {
                    name: name.clone(),
                    state: Mutex::new(TopicState::default()),
                })
            })
            .clone()
    }

    /// Checks what every publish must satisfy.
    pub(crate) fn check_publish(&self, topic: &str, messages: &[Message]) -> Result<()> {
        courier_core::name::validate_topic(topic)?;
        courier_core::adapter::check_payloads(messages, self.config.max_payload)
    }

    /// Whether any group receives the topic's messages.
    pub(crate) fn has_groups(&self, topic: &str) -> bool {
        let topic = self.topics.read().get(topic).cloned();
        topic.is_some_and(|t| !t.state.lock().groups.is_empty())
    }

    /// Whether a message published to `topic` now would reach nobody: no
    /// group, and no history kept for later ones.
    pub(crate) fn is_unroutable(&self, topic: &str) -> bool {
        self.config.retention == 0 && !self.has_groups(topic)
    }

    /// Appends messages to the topic's history and to every group's queue,
    /// or hands them back when that would take a group past
    /// [`MemoryConfig::max_queue_len`]. Call [`State::check_publish`] first.
    pub(crate) fn try_append(&self, topic: &str, messages: Vec<Message>) -> Result<(), Full> {
        let topic = self.topic(topic);
        let mut woken = Vec::new();
        {
            let mut state = topic.state.lock();
            let limit = self.config.max_queue_len;
            if let Some(full) = state.groups.iter().find(|group| {
                let (ready, held) = group.backlog();
                ready + held + messages.len() > limit
            }) {
                return Err(Full {
                    messages,
                    group: full.name.clone(),
                });
            }
            let retention = self.config.retention;
            if retention > 0 {
                let keep = messages.len().min(retention);
                let overflow = (state.history.len() + keep).saturating_sub(retention);
                state.history.drain(..overflow);
                state
                    .history
                    .extend(messages[messages.len() - keep..].iter().cloned());
            }
            let group_count = state.groups.len();
            let mut messages = Some(messages);
            for (i, group) in state.groups.iter().enumerate() {
                let batch = if i + 1 == group_count {
                    messages.take().unwrap_or_default()
                } else {
                    messages.clone().unwrap_or_default()
                };
                let mut q = group.queue.lock();
                q.ready.extend(batch.into_iter().map(|message| Pending {
                    message,
                    deliveries: 0,
                }));
                woken.append(&mut q.waiters);
            }
        }
        woken.into_iter().for_each(Waker::wake);
        Ok(())
    }

    /// The group, created if missing; a new group starting at `Earliest` is
    /// filled from the topic's history.
    /// The group if it exists.
    pub(crate) fn find_group(&self, topic: &str, group: &str) -> Option<Arc<Group>> {
        let topic = self.topics.read().get(topic)?.clone();
        let state = topic.state.lock();
        state.groups.iter().find(|g| &*g.name == group).cloned()
    }

    pub(crate) fn group(&self, topic: &str, group: &str, start: StartPosition) -> Arc<Group> {
        let topic = self.topic(topic);
        let mut state = topic.state.lock();
        if let Some(g) = state.groups.iter().find(|g| &*g.name == group) {
            return g.clone();
        }
        let mut queue = GroupQueue::default();
        if start == StartPosition::Earliest {
            queue.ready.extend(state.history.iter().map(|m| Pending {
                message: m.clone(),
                deliveries: 0,
            }));
        }
        let g = Arc::new(Group {
            name: Arc::from(group),
            topic: topic.name.clone(),
            queue: Mutex::new(queue),
            members: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            starved: AtomicBool::new(false),
            room: self.room.clone(),
        });
        state.groups.push(g.clone());
        g
    }
}
