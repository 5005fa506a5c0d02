//! The idempotent consumer: a layer for courier's consumer runtime that
//! claims each message before its handler runs.
//!
//! Everything that touches the runtime's API is in this file.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use courier_core::Message;
use courier_core::runtime::{Handler, HandlerError, HandlerResult, Layer, Request};
use futures::future::BoxFuture;

use crate::error::Error;
use crate::key::{ClaimToken, IdempotencyKey};
use crate::store::{Claim, IdempotencyStore};

/// Default [`IdempotencyLayer::lease`]: 30 s.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default [`IdempotencyLayer::retention`]: 24 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A user function that gives a message's business key.
type KeyFn = Arc<dyn Fn(&Message) -> Option<String> + Send + Sync>;

/// What the layer does when the store cannot be asked (unreachable, timed
/// out, failing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Fail the attempt transiently: the message is not acked, and the
    /// runtime tries it again later (the default). Nothing is ever taken as
    /// handled without the store saying so.
    #[default]
    Retry,
    /// Call the handler without deduplication (at-least-once while the
    /// store is away): for handlers where a duplicate is cheaper than a
    /// delay.
    Handle,
}

/// Makes a consumer's handler idempotent: each message is claimed in an
/// [`IdempotencyStore`] before the handler runs, so that a message
/// delivered several times (or by several consumers of the group at once)
/// has its effect once.
///
/// Per attempt:
///
/// | claim answers | the layer |
/// |---|---|
/// | `Claimed` | calls the handler; on success completes the key (kept for [`retention`](Self::retention)) and lets the message be acked; on failure releases the key and returns the failure (retry or dead-letter as usual) |
/// | `AlreadyDone` | acks without calling the handler |
/// | `InProgress` | defers the attempt ([`HandlerError::deferred`]) by the time left on the other worker's lease (or [`in_progress_retry`](Self::in_progress_retry)), so the runtime tries again once it is settled, without using up an attempt |
/// | an error | fails transiently: the message is not acked ([`OnStoreError::Retry`], the default) |
///
/// The key is the message id in the scope of the consumer group
/// ([`Request::group`]), or what [`key_with`](Self::key_with) makes of
/// the message (a business key). A message without a key, or with a key
/// the store refuses (empty, too long), fails permanently: it would never
/// be handled.
///
/// Each outcome counts in [`IdempotencyLayer::stats`].
///
/// # Limits
///
/// The claim and the handler's effect are two writes: if the handler
/// succeeds but completing fails (the store went away at that instant),
/// the message is not acked, the key stays claimed until its lease ends,
/// and then the handler runs again. Choose a lease longer than the handler
/// can take (a [`TimeoutLayer`](courier_core::runtime::TimeoutLayer) inside
/// this one bounds it): a handler still running when its lease ends may
/// run twice at once. For effects that are writes to PostgreSQL or SQLite,
/// claim inside the same transaction instead (`claim_in`), which has no
/// such window.
///
/// An attempt cut short by a shutdown deadline (its future dropped)
/// releases its claim in the background.
///
/// `InProgress` defers the message ([`HandlerError::deferred`]): the
/// runtime tries again once the other worker's lease is over, without using
/// up an attempt of its retry policy.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use courier_core::runtime::{self, Consumer};
/// use courier_core::{Message, Subscription};
/// use courier_idempotency::IdempotencyLayer;
/// use courier_memory::MemoryBroker;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = MemoryBroker::new().into_broker();
/// let store = courier_idempotency::connect("memory://").await?;
/// let dedup = IdempotencyLayer::new(store);
/// let charges = Arc::new(AtomicU32::new(0));
///
/// let consumer = Consumer::builder(
///     &broker,
///     Subscription::new("orders", "billing"),
///     runtime::raw({
///         let charges = charges.clone();
///         move |_message: Message| {
///             charges.fetch_add(1, Ordering::SeqCst);
///             async { Ok(()) }
///         }
///     }),
/// )
/// .layer(dedup.clone())
/// .build();
/// let metrics = consumer.metrics();
/// broker.provision(consumer.subscription()).await?;
/// let shutdown = consumer.shutdown_handle();
/// let running = tokio::spawn(consumer.run());
///
/// let order = Message::new("order 42");
/// for _ in 0..3 {
///     broker.publish("orders", order.clone()).await?; // the same id, three times
/// }
/// while metrics.snapshot().handled < 3 {
///     tokio::task::yield_now().await;
/// }
/// shutdown.shutdown();
/// running.await??;
/// assert_eq!(charges.load(Ordering::SeqCst), 1);
/// assert_eq!(dedup.stats().skipped, 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    settings: Arc<Settings>,
}

#[derive(Clone)]
struct Settings {
    store: Arc<dyn IdempotencyStore>,
    key: Option<KeyFn>,
    lease: Duration,
    retention: Duration,
    in_progress_retry: Option<Duration>,
    on_store_error: OnStoreError,
    counters: Arc<Counters>,
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("IdempotencyLayer")
            .field("store", &s.store.url())
            .field("business_key", &s.key.is_some())
            .field("lease", &s.lease)
            .field("retention", &s.retention)
            .field("in_progress_retry", &s.in_progress_retry)
            .field("on_store_error", &s.on_store_error)
            .finish()
    }
}

impl IdempotencyLayer {
    /// A layer claiming message ids in `store`, scoped by consumer group,
    /// with the default lease ([`DEFAULT_LEASE`]) and retention
    /// ([`DEFAULT_RETENTION`]).
    pub fn new(store: Arc<dyn IdempotencyStore>) -> Self {
        IdempotencyLayer {
            settings: Arc::new(Settings {
                store,
                key: None,
                lease: DEFAULT_LEASE,
                retention: DEFAULT_RETENTION,
                in_progress_retry: None,
                on_store_error: OnStoreError::Retry,
                counters: Arc::default(),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        change(Arc::make_mut(&mut self.settings));
        self
    }

    /// Deduplicates on a business key instead of the message id: the same
    /// order placed twice as two messages is handled once. `None` means the
    /// message has no key (it fails permanently).
    ///
    /// ```
    /// # let store = std::sync::Arc::new(courier_idempotency::MemoryStore::default());
    /// use courier_idempotency::IdempotencyLayer;
    /// let layer = IdempotencyLayer::new(store)
    ///     .key_with(|message| message.header("order-id").map(str::to_owned));
    /// # let _ = layer;
    /// ```
    pub fn key_with(
        self,
        key: impl Fn(&Message) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.with(|s| s.key = Some(Arc::new(key)))
    }

    /// How long a claim holds the key while the handler runs (default
    /// [`DEFAULT_LEASE`]). Longer than the handler can take; short enough
    /// that a crashed worker's messages are not held up for long.
    pub fn lease(self, lease: Duration) -> Self {
        self.with(|s| s.lease = lease)
    }

    /// How long a handled message is remembered (default
    /// [`DEFAULT_RETENTION`]): longer than duplicates can arrive (the
    /// broker's redelivery horizon, a replay from the start).
    pub fn retention(self, retention: Duration) -> Self {
        self.with(|s| s.retention = retention)
    }

    /// Asks again after at most `delay` when another worker holds the key
    /// (default: when its lease ends). Shorter settles duplicates sooner,
    /// at the cost of more attempts.
    pub fn in_progress_retry(self, delay: Duration) -> Self {
        self.with(|s| s.in_progress_retry = Some(delay))
    }

    /// What to do when the store fails (default [`OnStoreError::Retry`]).
    pub fn on_store_error(self, policy: OnStoreError) -> Self {
        self.with(|s| s.on_store_error = policy)
    }

    /// The layer's counts so far, shared by every handler it wrapped.
    pub fn stats(&self) -> IdempotencyStats {
        self.settings.counters.snapshot()
    }
}

impl<H: Handler> Layer<H> for IdempotencyLayer {
    type Handler = Idempotent<H>;

    fn layer(&self, inner: H) -> Idempotent<H> {
        Idempotent {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// A handler wrapped by an [`IdempotencyLayer`].
pub struct Idempotent<H> {
    inner: H,
    settings: Arc<Settings>,
}

impl<H> fmt::Debug for Idempotent<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotent")
            .field("store", &self.settings.store.url())
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Handler for Idempotent<H> {
    fn call<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(self.attempt(request))
    }
}

impl<H: Handler> Idempotent<H> {
    async fn attempt(&self, request: Request<'_>) -> HandlerResult {
        let s = &*self.settings;
        let counters = &*s.counters;
        let message = request.message();
        let key = match &s.key {
            None => message.id().to_string(),
            Some(key_of) => key_of(message).ok_or_else(|| {
                HandlerError::permanent(MissingKey {
                    message: message.id().to_string(),
                })
            })?,
        };
        let key = IdempotencyKey::new(request.group(), key);
        let token = match s.store.claim(&key, s.lease).await {
            Ok(Claim::Claimed(token)) => token,
            Ok(Claim::AlreadyDone { .. }) => {
                Counters::add(&counters.skipped);
                return Ok(());
            }
            Ok(Claim::InProgress { until }) => {
                Counters::add(&counters.in_progress);
                let left = until
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    // Past the lease's end by the store's clock, too.
                    + Duration::from_millis(10);
                let delay = s.in_progress_retry.map_or(left, |most| most.min(left));
                let busy = ClaimedElsewhere {
                    key: key.to_string(),
                    until,
                };
                return Err(HandlerError::deferred(busy, delay));
            }
            Err(error @ Error::InvalidKey { .. }) => return Err(HandlerError::permanent(error)),
            Err(error) => {
                Counters::add(&counters.store_errors);
                tracing::warn!(%key, %error, "idempotency store failed to claim");
                return match s.on_store_error {
                    OnStoreError::Retry => Err(HandlerError::transient(error)),
                    OnStoreError::Handle => self.inner.call(request).await,
                };
            }
        };
        Counters::add(&counters.claimed);
        let mut claim = ReleaseOnDrop {
            store: s.store.clone(),
            token: Some(token),
        };
        let outcome = self.inner.call(request).await;
        let token = claim.token.take().expect("taken once");
        match outcome {
            Ok(()) => match s.store.complete(&token, s.retention).await {
                Ok(()) => {
                    Counters::add(&counters.completed);
                    Ok(())
                }
                Err(error @ Error::LeaseLost { .. }) => {
                    // The work is done; failing now would run it again.
                    Counters::add(&counters.lease_lost);
                    tracing::warn!(%key, %error, "handler outlived its lease; the key may be handled again");
                    Ok(())
                }
                Err(error) => {
                    Counters::add(&counters.store_errors);
                    Counters::add(&counters.complete_errors);
                    tracing::warn!(%key, %error, "idempotency store failed to complete; the message is not acked");
                    Err(HandlerError::transient(error))
                }
            },
            Err(failure) => {
                match s.store.release(&token).await {
                    Ok(()) => Counters::add(&counters.released),
                    Err(error) => {
                        Counters::add(&counters.store_errors);
                        tracing::warn!(%key, %error, "idempotency store failed to release; the key is free when its lease ends");
                    }
                }
                Err(failure)
            }
        }
    }
}

/// Releases a claim whose attempt was dropped before it finished.
struct ReleaseOnDrop {
    store: Arc<dyn IdempotencyStore>,
    token: Option<ClaimToken>,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            runtime.spawn(async move {
                if let Err(error) = store.release(&token).await {
                    tracing::debug!(key = %token.key(), %error, "releasing a cancelled claim failed");
                }
            });
        }
    }
}

/// Another worker holds the message's key: the attempt is tried again
/// later. Transient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} is being handled by another worker (lease until {until:?})")]
pub struct ClaimedElsewhere {
    /// The key, `scope/key`.
    pub key: String,
    /// When the other worker's lease ends.
    pub until: SystemTime,
}

/// The business-key function found no key in the message. Permanent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message {message} has no idempotency key")]
pub struct MissingKey {
    /// The message's id.
    pub message: String,
}

/// What an [`IdempotencyLayer`] has done, counted per attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdempotencyStats {
    /// Attempts that claimed their key and called the handler.
    pub claimed: u64,
    /// Attempts acked without calling the handler: the message was done.
    pub skipped: u64,
    /// Attempts put off because another worker held the key.
    pub in_progress: u64,
    /// Keys completed after the handler succeeded.
    pub completed: u64,
    /// Keys released after the handler failed.
    pub released: u64,
    /// Claims, completions and releases the store failed.
    pub store_errors: u64,
    /// Handlers that succeeded but whose completion the store failed: the
    /// message was not acked, and its handler runs again once the lease
    /// ends. The only way a duplicate effect gets through (besides a
    /// handler outliving its lease).
    pub complete_errors: u64,
    /// Completions refused because the handler outlived its lease.
    pub lease_lost: u64,
}

#[derive(Debug, Default)]
struct Counters {
    claimed: AtomicU64,
    skipped: AtomicU64,
    in_progress: AtomicU64,
    completed: AtomicU64,
    released: AtomicU64,
    store_errors: AtomicU64,
    complete_errors: AtomicU64,
    lease_lost: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> IdempotencyStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        IdempotencyStats {
            claimed: get(&self.claimed),
            skipped: get(&self.skipped),
            in_progress: get(&self.in_progress),
            completed: get(&self.completed),
            released: get(&self.released),
            store_errors: get(&self.store_errors),
            complete_errors: get(&self.complete_errors),
            lease_lost: get(&self.lease_lost),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use courier_core::runtime::{self, FailureKind};
    use std::sync::atomic::AtomicU32;

    fn counting(calls: &Arc<AtomicU32>, fail: bool) -> impl Handler + use<> {
        let calls = calls.clone();
        runtime::raw(move |_message| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if fail {
                    Err(HandlerError::transient("downstream down"))
                } else {
                    Ok(())
                }
            }
        })
    }

    async fn call(handler: &impl Handler, message: &Message, group: &str) -> HandlerResult {
        handler.call(Request::new(message, "orders", group)).await
    }

    #[tokio::test]
    async fn duplicates_skip_the_handler_per_group() {
        let layer = IdempotencyLayer::new(Arc::new(MemoryStore::default()));
        let calls = Arc::new(AtomicU32::new(0));
        let handler = layer.layer(counting(&calls, false));
        let message = Message::new("m");
        for _ in 0..3 {
            call(&handler, &message, "billing").await.expect("handled");
        }
        call(&handler, &message, "shipping").await.expect("handled");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let stats = layer.stats();
        assert_eq!((stats.claimed, stats.completed, stats.skipped), (2, 2, 2));
    }

    #[tokio::test]
    async fn failures_release_the_key_for_the_next_attempt() {
        let layer = IdempotencyLayer::new(Arc::new(MemoryStore::default()));
        let calls = Arc::new(AtomicU32::new(0));
        let failing = layer.layer(counting(&calls, true));
        let message = Message::new("m");
        let error = call(&failing, &message, "g").await.unwrap_err();
        assert_eq!(error.kind(), FailureKind::Transient);
        let working = layer.layer(counting(&calls, false));
        call(&working, &message, "g")
            .await
            .expect("handled on retry");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(layer.stats().released, 1);
    }

    #[tokio::test]
    async fn a_held_key_defers_the_message_until_the_lease_ends() {
        let store = Arc::new(MemoryStore::default());
        let message = Message::new("m");
        let key = IdempotencyKey::new("g", message.id().to_string());
        let Ok(Claim::Claimed(_held)) = store.claim(&key, Duration::from_secs(20)).await else {
            panic!("not claimed");
        };
        let calls = Arc::new(AtomicU32::new(0));
        let layer = IdempotencyLayer::new(store.clone());
        let error = call(&layer.layer(counting(&calls, false)), &message, "g")
            .await
            .unwrap_err();
        assert_eq!(error.kind(), FailureKind::Deferred);
        assert!(error.source().is::<ClaimedElsewhere>(), "{error}");
        let hint = error.retry_after_hint().expect("hint");
        assert!(
            hint > Duration::from_secs(15) && hint <= Duration::from_secs(21),
            "{hint:?}"
        );
        let capped = layer.in_progress_retry(Duration::from_millis(50));
        let error = call(&capped.layer(counting(&calls, false)), &message, "g")
            .await
            .unwrap_err();
        assert_eq!(error.retry_after_hint(), Some(Duration::from_millis(50)));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn missing_or_bad_business_keys_fail_permanently() {
        let layer = IdempotencyLayer::new(Arc::new(MemoryStore::default()))
            .key_with(|m| m.header("order-id").map(str::to_owned));
        let calls = Arc::new(AtomicU32::new(0));
        let handler = layer.layer(counting(&calls, false));
        let error = call(&handler, &Message::new("m"), "g").await.unwrap_err();
        assert!(error.is_permanent());
        assert!(error.source().is::<MissingKey>());
        let empty = Message::new("m")
            .with_header("order-id", "")
            .expect("header");
        let error = call(&handler, &empty, "g").await.unwrap_err();
        assert!(error.is_permanent(), "{error}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_cancelled_attempt_releases_its_claim() {
        let store = Arc::new(MemoryStore::default());
        let layer = IdempotencyLayer::new(store.clone());
        let stuck = layer.layer(runtime::raw(|_m| std::future::pending::<HandlerResult>()));
        let message = Message::new("m");
        let attempt = call(&stuck, &message, "g");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), attempt)
                .await
                .is_err()
        );
        let key = IdempotencyKey::new("g", message.id().to_string());
        let mut answer = store.claim(&key, DEFAULT_LEASE).await.expect("claim");
        for _ in 0..100 {
            if answer.is_claimed() {
                break;
            }
            tokio::task::yield_now().await;
            answer = store.claim(&key, DEFAULT_LEASE).await.expect("claim");
        }
        assert!(answer.is_claimed(), "{answer:?}");
    }
}
