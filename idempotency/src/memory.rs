//! The in-process store: bounded, with TTL eviction.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::key::{ClaimToken, IdempotencyKey, check_duration};
use crate::store::{Claim, IdempotencyStore};

const URL: &str = "memory://";

/// An idempotency store in this process's memory (`memory://`): for tests,
/// single-instance services, and as the embedded default.
///
/// Bounded: it holds at most [`StoreConfig::max_keys`] keys. Expired claims
/// and done marks are dropped as new keys come in; when the store is full
/// of live entries, the done mark closest to its expiry is forgotten early,
/// and when every entry is a live claim a new claim fails with
/// [`Error::Full`] (retryable). Nothing survives the process, and other
/// processes do not see it: several instances of a service need a shared
/// store (Redis, PostgreSQL).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use courier_idempotency::{Claim, IdempotencyKey, IdempotencyStore, MemoryStore, StoreConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier_idempotency::Result<()> {
/// let store = MemoryStore::new(StoreConfig::default().max_keys(2));
/// for order in ["a", "b", "c"] {
///     let key = IdempotencyKey::new("billing", order);
///     let Claim::Claimed(token) = store.claim(&key, Duration::from_secs(5)).await? else {
///         unreachable!();
///     };
///     store.complete(&token, Duration::from_secs(60)).await?;
/// }
/// assert_eq!(store.len(), 2); // "a" was forgotten to make room
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    max_keys: usize,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Arc<IdempotencyKey>, Entry>,
    /// Live claims by the end of their lease.
    leases: BTreeSet<(Instant, u64, Arc<IdempotencyKey>)>,
    /// Done marks by the end of their retention.
    done: BTreeSet<(Instant, u64, Arc<IdempotencyKey>)>,
    /// Tells apart entries that expire at the same instant.
    sequence: u64,
}

#[derive(Debug)]
struct Entry {
    owner: String,
    done: bool,
    expires: Instant,
    sequence: u64,
    result: Option<Bytes>,
}

impl MemoryStore {
    /// An empty store; only [`StoreConfig::max_keys`] applies.
    pub fn new(config: StoreConfig) -> Self {
        MemoryStore {
            state: Mutex::new(State::default()),
            max_keys: config.max_keys,
        }
    }

    /// How many keys the store holds (expired ones not yet dropped
    /// included).
    pub fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(StoreConfig::default())
    }
}

impl State {
    fn index(&mut self, done: bool) -> &mut BTreeSet<(Instant, u64, Arc<IdempotencyKey>)> {
        if done {
            &mut self.done
        } else {
            &mut self.leases
        }
    }

    /// Removes `key`'s entry and its index slot.
    fn remove(&mut self, key: &Arc<IdempotencyKey>) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.index(entry.done)
            .remove(&(entry.expires, entry.sequence, key.clone()));
        Some(entry)
    }

    /// Stores `entry` under `key`, replacing what was there.
    fn insert(&mut self, key: Arc<IdempotencyKey>, mut entry: Entry) {
        self.remove(&key);
        self.sequence += 1;
        entry.sequence = self.sequence;
        self.index(entry.done)
            .insert((entry.expires, entry.sequence, key.clone()));
        self.entries.insert(key, entry);
    }

    /// Drops up to `limit` entries of each kind that expired by `now`.
    fn drop_expired(&mut self, now: Instant, limit: usize) {
        for done in [false, true] {
            for _ in 0..limit {
                match self.index(done).first() {
                    Some((expires, _, key)) if *expires <= now => {
                        let key = key.clone();
                        self.remove(&key);
                    }
                    _ => break,
                }
            }
        }
    }

    /// Makes room for one more key: drops expired entries, then the done
    /// mark closest to its expiry.
    fn make_room(&mut self, now: Instant, max_keys: usize) -> Result<()> {
        if self.entries.len() < max_keys {
            return Ok(());
        }
        self.drop_expired(now, usize::MAX);
        while self.entries.len() >= max_keys {
            let Some((_, _, key)) = self.done.first().cloned() else {
                return Err(Error::Full {
                    url: URL.to_owned(),
                    max_keys,
                });
            };
            self.remove(&key);
        }
        Ok(())
    }

    /// The live entry of `key`, if any: the one held by `owner`.
    fn owned(&mut self, key: &IdempotencyKey, owner: &str, now: Instant) -> Option<&mut Entry> {
        self.entries
            .get_mut(key)
            .filter(|entry| entry.owner == owner && entry.expires > now)
    }
}

fn system_time(at: Instant, now: Instant) -> SystemTime {
    SystemTime::now() + at.saturating_duration_since(now)
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(&self, key: &IdempotencyKey, lease: Duration) -> Result<Claim> {
        key.check(URL)?;
        check_duration(URL, "lease", lease)?;
        let now = Instant::now();
        let mut state = self.state.lock();
        // A little cleaning on every claim keeps expired entries from
        // lingering until the store is full.
        state.drop_expired(now, 2);
        if let Some(entry) = state.entries.get(key)
            && entry.expires > now
        {
            return Ok(if entry.done {
                Claim::AlreadyDone {
                    result: entry.result.clone(),
                }
            } else {
                Claim::InProgress {
                    until: system_time(entry.expires, now),
                }
            });
        }
        let key = Arc::new(key.clone());
        if !state.entries.contains_key(&key) {
            state.make_room(now, self.max_keys)?;
        }
        let owner = ClaimToken::fresh_owner();
        let expires = now + lease;
        state.insert(
            key.clone(),
            Entry {
                owner: owner.clone(),
                done: false,
                expires,
                sequence: 0,
                result: None,
            },
        );
        Ok(Claim::Claimed(ClaimToken::new(
            (*key).clone(),
            owner,
            system_time(expires, now),
        )))
    }

    async fn complete_with_result(
        &self,
        token: &ClaimToken,
        retention: Duration,
        result: Option<Bytes>,
    ) -> Result<()> {
        check_duration(URL, "retention", retention)?;
        let now = Instant::now();
        let mut state = self.state.lock();
        let key = token.key();
        let held = match state.entries.get(key) {
            // A completed entry stays completable by its owner, so a retry
            // after a lost answer succeeds.
            Some(entry) => entry.owner == token.owner() && (entry.done || entry.expires > now),
            None => false,
        };
        if !held {
            return Err(token.lost(URL));
        }
        state.insert(
            Arc::new(key.clone()),
            Entry {
                owner: token.owner().to_owned(),
                done: true,
                expires: now + retention,
                sequence: 0,
                result,
            },
        );
        Ok(())
    }

    async fn release(&self, token: &ClaimToken) -> Result<()> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let key = token.key();
        match state.owned(key, token.owner(), now) {
            Some(entry) if !entry.done => {
                let key = Arc::new(key.clone());
                state.remove(&key);
                Ok(())
            }
            _ => Err(token.lost(URL)),
        }
    }

    fn url(&self) -> &str {
        URL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    async fn claim(store: &MemoryStore, key: &str) -> Result<Claim> {
        store.claim(&IdempotencyKey::new("g", key), LONG).await
    }

    async fn done(store: &MemoryStore, key: &str, retention: Duration) {
        let Claim::Claimed(token) = claim(store, key).await.expect("claim") else {
            panic!("{key} not claimed");
        };
        store.complete(&token, retention).await.expect("complete");
    }

    #[tokio::test]
    async fn a_full_store_forgets_the_done_mark_closest_to_expiry() {
        let store = MemoryStore::new(StoreConfig::default().max_keys(3));
        done(&store, "a", Duration::from_secs(300)).await;
        done(&store, "b", Duration::from_secs(100)).await;
        done(&store, "c", Duration::from_secs(200)).await;
        done(&store, "d", Duration::from_secs(400)).await;
        assert_eq!(store.len(), 3);
        assert!(claim(&store, "b").await.expect("claim").is_claimed());
        // "b" is a claim now; making room for it dropped "c" (200 s).
        for kept in ["a", "d"] {
            assert!(
                claim(&store, kept).await.expect("claim").is_done(),
                "{kept}"
            );
        }
        assert_eq!(store.len(), 3);
    }

    #[tokio::test]
    async fn a_store_full_of_claims_refuses_more() {
        let store = MemoryStore::new(StoreConfig::default().max_keys(2));
        for key in ["a", "b"] {
            assert!(claim(&store, key).await.expect("claim").is_claimed());
        }
        match claim(&store, "c").await {
            Err(e @ Error::Full { max_keys: 2, .. }) => assert!(e.is_retryable()),
            other => panic!("expected Full, got {other:?}"),
        }
        // Keys it holds still answer.
        assert!(claim(&store, "a").await.expect("claim").is_in_progress());
    }

    #[tokio::test]
    async fn expired_entries_are_dropped_as_claims_come_in() {
        let store = MemoryStore::new(StoreConfig::default());
        for n in 0..10 {
            done(&store, &format!("old-{n}"), Duration::from_millis(1)).await;
        }
        let last_expiry = store.state.lock().done.last().expect("marks").0;
        while Instant::now() <= last_expiry {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(store.len(), 10, "nothing is dropped without a claim");
        // Each claim drops up to two expired entries before it adds its own.
        for n in 0..5 {
            assert!(
                claim(&store, &format!("new-{n}"))
                    .await
                    .expect("claim")
                    .is_claimed()
            );
        }
        assert_eq!(store.len(), 5);
        let state = store.state.lock();
        assert!(state.done.is_empty());
        assert_eq!(state.leases.len(), 5);
    }
}
