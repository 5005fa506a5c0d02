//! Request inboxes: where replies to a connection's requests arrive.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use courier_core::MessageId;
use courier_core::request::PendingReplies;
use foldhash::fast::RandomState;
use parking_lot::Mutex;

/// Inboxes by name (hashed with foldhash: every reply looks one up).
pub(crate) type Inboxes = HashMap<String, Weak<PendingReplies>, RandomState>;

/// Every inbox of the process, by name: a reply names its inbox, whichever
/// broker connection sends it.
pub(crate) fn inboxes() -> &'static Mutex<Inboxes> {
    static INBOXES: OnceLock<Mutex<Inboxes>> = OnceLock::new();
    INBOXES.get_or_init(Default::default)
}

/// A connection's inbox, registered on its first request.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    registered: OnceLock<(String, Arc<PendingReplies>)>,
}

impl Inbox {
    /// Replies that came after their request had given up.
    pub(crate) fn late_replies(&self) -> u64 {
        self.registered
            .get()
            .map_or(0, |(_, pending)| pending.late())
    }

    pub(crate) fn get(&self) -> &(String, Arc<PendingReplies>) {
        self.registered.get_or_init(|| {
            let name = format!("memory-inbox-{}", MessageId::new());
            let pending = PendingReplies::new();
            inboxes()
                .lock()
                .insert(name.clone(), Arc::downgrade(&pending));
            (name, pending)
        })
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        if let Some((name, _)) = self.registered.get() {
            inboxes().lock().remove(name);
        }
    }
}
