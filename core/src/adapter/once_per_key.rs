//! Setup that must happen once per name however many callers race for it:
//! declaring a topic's exchange, creating a topic.
//!
//! The first caller for a key runs the setup; callers arriving meanwhile
//! wait for its outcome instead of running their own. A success is kept
//! (later callers get it at once); a failure is handed to the waiting
//! callers and then forgotten, so the next caller tries again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// The outcome of a setup as the waiting callers see it.
type Outcome<V, E> = Option<Result<V, Arc<E>>>;

enum Slot<V, E> {
    /// The setup succeeded with this value.
    Ready(V),
    /// A caller is running the setup; its outcome arrives here.
    Running(watch::Receiver<Outcome<V, E>>),
}

/// What a caller does next.
enum Turn<V, E> {
    /// Return the kept value.
    Ready(V),
    /// Wait for the caller running the setup.
    Wait(watch::Receiver<Outcome<V, E>>),
    /// Run the setup and send its outcome.
    Lead(watch::Sender<Outcome<V, E>>, watch::Receiver<Outcome<V, E>>),
}

/// Runs a setup at most once at a time per key and keeps its successes.
///
/// # Examples
///
/// ```
/// # tokio_test_block_on(async {
/// use courier_core::adapter::OncePerKey;
///
/// let declared: OncePerKey<u32, String> = OncePerKey::new();
/// let declare = || async { Ok::<_, String>(7) };
/// let (a, b) = futures::join!(
///     declared.get_or_run("orders", declare, |e| e.clone()),
///     declared.get_or_run("orders", declare, |e| e.clone()),
/// );
/// assert_eq!((a, b), (Ok(7), Ok(7)));
/// assert_eq!(declared.runs(), 1);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
pub struct OncePerKey<V, E> {
    slots: Mutex<HashMap<String, Slot<V, E>>>,
    runs: AtomicU64,
}

impl<V, E> std::fmt::Debug for OncePerKey<V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OncePerKey")
            .field("keys", &self.lock().len())
            .field("runs", &self.runs())
            .finish()
    }
}

impl<V, E> Default for OncePerKey<V, E> {
    fn default() -> Self {
        OncePerKey {
            slots: Mutex::new(HashMap::new()),
            runs: AtomicU64::new(0),
        }
    }
}

impl<V, E> OncePerKey<V, E> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot<V, E>>> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many times a setup was started, for tests and metrics.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}

impl<V: Clone, E> OncePerKey<V, E> {
    /// Nothing set up yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of a setup of `key` that succeeded, if any.
    pub fn get(&self, key: &str) -> Option<V> {
        match self.lock().get(key) {
            Some(Slot::Ready(value)) => Some(value.clone()),
            _ => None,
        }
    }

    /// Forgets `key` (the broker lost what the setup made, say); a setup
    /// running now still completes for its callers but is not kept.
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Forgets every key, as [`OncePerKey::forget`].
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    /// The value of `key`'s setup: kept from an earlier success, awaited
    /// from a caller running it now, or from running `setup` here. A
    /// failure seen by waiting callers is a copy made by `share` (applied
    /// to the error, then to that copy for each waiting caller).
    ///
    /// # Errors
    ///
    /// What `setup` failed with (`share` of it for callers that waited).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the caller running the setup is dropped, a waiting
    /// caller runs it instead.
    pub async fn get_or_run<F, Fut>(
        &self,
        key: &str,
        setup: F,
        share: impl Fn(&E) -> E,
    ) -> Result<V, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        loop {
            let mut waiting = match self.join_or_lead(key) {
                Turn::Ready(value) => return Ok(value),
                Turn::Wait(outcome) => outcome,
                Turn::Lead(sender, receiver) => {
                    return self.run(key, &setup, &share, sender, receiver).await;
                }
            };
            match waiting.wait_for(Option::is_some).await {
                Ok(outcome) => match outcome.as_ref() {
                    Some(Ok(value)) => return Ok(value.clone()),
                    Some(Err(error)) => return Err(share(error)),
                    None => {}
                },
                // The running caller was dropped: the slot is gone, try again.
                Err(_) => continue,
            }
        }
    }

    fn join_or_lead(&self, key: &str) -> Turn<V, E> {
        let mut slots = self.lock();
        match slots.get(key) {
            Some(Slot::Ready(value)) => Turn::Ready(value.clone()),
            Some(Slot::Running(outcome)) => Turn::Wait(outcome.clone()),
            None => {
                let (sender, receiver) = watch::channel(None);
                slots.insert(key.to_owned(), Slot::Running(receiver.clone()));
                Turn::Lead(sender, receiver)
            }
        }
    }

    async fn run<F, Fut>(
        &self,
        key: &str,
        setup: &F,
        share: impl Fn(&E) -> E,
        sender: watch::Sender<Outcome<V, E>>,
        receiver: watch::Receiver<Outcome<V, E>>,
    ) -> Result<V, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.runs.fetch_add(1, Ordering::Relaxed);
        // Removes the slot if this future is dropped before the outcome.
        let mut guard = SlotGuard {
            owner: self,
            key,
            receiver,
            armed: true,
        };
        let outcome = setup().await;
        guard.armed = false;
        let mine = |slots: &HashMap<String, Slot<V, E>>| matches!(slots.get(key), Some(Slot::Running(r)) if r.same_channel(&guard.receiver));
        match outcome {
            Ok(value) => {
                let mut slots = self.lock();
                if mine(&slots) {
                    slots.insert(key.to_owned(), Slot::Ready(value.clone()));
                }
                drop(slots);
                sender.send_replace(Some(Ok(value.clone())));
                Ok(value)
            }
            Err(error) => {
                let mut slots = self.lock();
                if mine(&slots) {
                    slots.remove(key);
                }
                drop(slots);
                sender.send_replace(Some(Err(Arc::new(share(&error)))));
                Err(error)
            }
        }
    }
}

struct SlotGuard<'a, V, E> {
    owner: &'a OncePerKey<V, E>,
    key: &'a str,
    receiver: watch::Receiver<Outcome<V, E>>,
    armed: bool,
}

impl<V, E> Drop for SlotGuard<'_, V, E> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut slots = self
            .owner
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if matches!(slots.get(self.key), Some(Slot::Running(r)) if r.same_channel(&self.receiver)) {
            slots.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_thousand_racing_callers_run_the_setup_once() {
        let once: OncePerKey<u32, String> = OncePerKey::new();
        let setups = AtomicUsize::new(0);
        let setup = || async {
            setups.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, String>(7)
        };
        let callers = (0..1_000).map(|_| once.get_or_run("orders", setup, Clone::clone));
        let outcomes = futures::future::join_all(callers).await;
        assert_eq!(outcomes.iter().filter(|o| **o == Ok(7)).count(), 1_000);
        assert_eq!(setups.load(Ordering::Relaxed), 1);
        assert_eq!(once.runs(), 1);
        assert_eq!(once.get("orders"), Some(7));
        // Another key has a setup of its own.
        assert_eq!(once.get_or_run("billing", setup, Clone::clone).await, Ok(7));
        assert_eq!(setups.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_failure_reaches_every_waiting_caller_and_is_not_kept() {
        let once: OncePerKey<u32, String> = OncePerKey::new();
        let setups = AtomicUsize::new(0);
        let failing = || async {
            setups.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err::<u32, _>("refused".to_owned())
        };
        let share = |e: &String| match e.strip_prefix("shared: ") {
            Some(_) => e.clone(),
            None => format!("shared: {e}"),
        };
        let callers = (0..100).map(|_| once.get_or_run("orders", failing, share));
        let outcomes = futures::future::join_all(callers).await;
        assert_eq!(setups.load(Ordering::Relaxed), 1);
        assert_eq!(outcomes[0], Err("refused".to_owned()));
        let shared = outcomes
            .iter()
            .filter(|o| **o == Err("shared: refused".to_owned()));
        assert_eq!(shared.count(), 99);
        assert_eq!(once.get("orders"), None);
        let succeeding = || async { Ok::<_, String>(3) };
        assert_eq!(once.get_or_run("orders", succeeding, share).await, Ok(3));
        assert_eq!(once.runs(), 2);
    }

    #[tokio::test]
    async fn a_waiting_caller_takes_over_from_a_dropped_one() {
        let once: OncePerKey<u32, String> = OncePerKey::new();
        let stuck = || futures::future::pending::<Result<u32, String>>();
        let first = once.get_or_run("orders", stuck, Clone::clone);
        let abandoned = tokio::time::timeout(Duration::from_millis(20), first).await;
        assert!(abandoned.is_err());
        let quick = || async { Ok::<_, String>(5) };
        assert_eq!(once.get_or_run("orders", quick, Clone::clone).await, Ok(5));
        assert_eq!(once.runs(), 2);
    }
}
