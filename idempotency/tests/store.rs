//! One suite for every store: written once as generic async functions over
//! `Arc<dyn IdempotencyStore>`, run against each backend compiled in
//! (memory; SQLite in a temp file; PostgreSQL and Redis in containers from
//! the testkit fixtures).
//!
//! `cargo test -p courier-idempotency --all-features --test store`

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use courier_idempotency::{Claim, ClaimToken, Error, IdempotencyKey, IdempotencyStore};
use courier_testkit::fixtures::unique_name;

use common::eventually;

type Store = Arc<dyn IdempotencyStore>;

const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(300);
/// How long a short lease or retention may take to be seen as ended.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(10);

fn fresh_key(what: &str) -> IdempotencyKey {
    IdempotencyKey::new(unique_name("scope"), what)
}

async fn claimed(store: &Store, key: &IdempotencyKey, lease: Duration) -> ClaimToken {
    match store.claim(key, lease).await.expect("claim") {
        Claim::Claimed(token) => token,
        other => panic!("{key}: expected Claimed, got {other:?}"),
    }
}

/// The store's answer to a claim of `key` with a long lease.
async fn ask(store: &Store, key: &IdempotencyKey) -> Claim {
    store.claim(key, LONG).await.expect("claim")
}

/// Claims `key` until the store answers `Claimed` (a lease or retention
/// ended), within [`EXPIRY_DEADLINE`].
async fn claimed_once_expired(store: &Store, key: &IdempotencyKey) -> ClaimToken {
    eventually("key claimable again", EXPIRY_DEADLINE, || async {
        match store.claim(key, LONG).await.expect("claim") {
            Claim::Claimed(token) => Some(token),
            _ => None,
        }
    })
    .await
}

/// Waits until `token`'s lease has ended by the wall clock.
async fn lease_ended(token: &ClaimToken) {
    let until = token.lease_until() + Duration::from_millis(50);
    eventually("lease end", EXPIRY_DEADLINE, || async {
        (SystemTime::now() > until).then_some(())
    })
    .await;
}

fn assert_lease_lost(outcome: courier_idempotency::Result<()>, store: &Store) {
    match outcome {
        Err(Error::LeaseLost { url, .. }) => assert_eq!(url, store.url()),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}

/// Claimed, then InProgress for everyone else until completed, then
/// AlreadyDone.
pub async fn three_outcomes(store: Store) {
    let key = fresh_key("order-1");
    let before = SystemTime::now();
    let token = claimed(&store, &key, LONG).await;
    assert_eq!(token.key(), &key);
    match store.claim(&key, LONG).await.expect("second claim") {
        Claim::InProgress { until } => {
            assert!(until > before, "lease ends in the future: {until:?}");
            assert!(until <= SystemTime::now() + LONG + Duration::from_secs(5));
        }
        other => panic!("expected InProgress, got {other:?}"),
    }
    store.complete(&token, LONG).await.expect("complete");
    match store.claim(&key, LONG).await.expect("third claim") {
        Claim::AlreadyDone { result } => assert_eq!(result, None),
        other => panic!("expected AlreadyDone, got {other:?}"),
    }
}

/// A stored result comes back to every later claimer.
pub async fn stored_result_comes_back(store: Store) {
    let key = fresh_key("request-7");
    let token = claimed(&store, &key, LONG).await;
    let answer = Bytes::from_static(b"{\"total\":42}");
    store
        .complete_with_result(&token, LONG, Some(answer.clone()))
        .await
        .expect("complete");
    for _ in 0..2 {
        match ask(&store, &key).await {
            Claim::AlreadyDone { result } => assert_eq!(result, Some(answer.clone())),
            other => panic!("expected AlreadyDone, got {other:?}"),
        }
    }
}

/// A released key is free at once; the released token holds nothing.
pub async fn release_frees_the_key(store: Store) {
    let key = fresh_key("failed-work");
    let first = claimed(&store, &key, LONG).await;
    store.release(&first).await.expect("release");
    let second = claimed(&store, &key, LONG).await;
    assert_lease_lost(store.release(&first).await, &store);
    assert_lease_lost(store.complete(&first, LONG).await, &store);
    assert!(ask(&store, &key).await.is_in_progress());
    store.complete(&second, LONG).await.expect("complete");
    assert_lease_lost(store.release(&second).await, &store);
    assert!(ask(&store, &key).await.is_done());
}

/// A lease that ends frees the key (a crashed worker blocks nothing for
/// ever), and the token whose lease ended is fenced: it can neither
/// complete nor release the new owner's claim.
pub async fn expired_lease_is_taken_over_and_fenced(store: Store) {
    let key = fresh_key("crashed-worker");
    let stale = claimed(&store, &key, SHORT).await;
    assert!(ask(&store, &key).await.is_in_progress());
    let owner = claimed_once_expired(&store, &key).await;
    assert_lease_lost(store.complete(&stale, LONG).await, &store);
    assert_lease_lost(store.release(&stale).await, &store);
    // The stale attempts changed nothing: the new owner still holds it.
    assert!(ask(&store, &key).await.is_in_progress());
    store.complete(&owner, LONG).await.expect("owner completes");
    assert!(ask(&store, &key).await.is_done());
}

/// A token whose lease ended cannot complete, even when nobody took over:
/// the key is free again, so marking it done would be a guess.
pub async fn expired_lease_cannot_complete(store: Store) {
    let key = fresh_key("slow-worker");
    let token = claimed(&store, &key, SHORT).await;
    lease_ended(&token).await;
    assert_lease_lost(store.complete(&token, LONG).await, &store);
    claimed(&store, &key, LONG).await;
}

/// A done mark is forgotten when its retention ends.
pub async fn retention_ends(store: Store) {
    let key = fresh_key("retained");
    let token = claimed(&store, &key, LONG).await;
    store.complete(&token, SHORT).await.expect("complete");
    assert!(ask(&store, &key).await.is_done());
    claimed_once_expired(&store, &key).await;
}

/// Completing twice with one token succeeds (a retry after a lost answer).
pub async fn complete_is_repeatable_by_its_owner(store: Store) {
    let key = fresh_key("retry-complete");
    let token = claimed(&store, &key, LONG).await;
    store.complete(&token, LONG).await.expect("first complete");
    store
        .complete_with_result(&token, LONG, Some(Bytes::from_static(b"again")))
        .await
        .expect("second complete");
    match ask(&store, &key).await {
        Claim::AlreadyDone { result } => assert_eq!(result.as_deref(), Some(&b"again"[..])),
        other => panic!("expected AlreadyDone, got {other:?}"),
    }
}

/// Scopes (consumer groups) never see each other's keys.
pub async fn scopes_are_independent(store: Store) {
    let billing = fresh_key("order-9");
    let shipping = IdempotencyKey::new(unique_name("other-scope"), "order-9");
    let token = claimed(&store, &billing, LONG).await;
    store.complete(&token, LONG).await.expect("complete");
    let other = claimed(&store, &shipping, LONG).await;
    assert!(ask(&store, &billing).await.is_done());
    store.release(&other).await.expect("release");
}

/// 64 workers claim one key at the same moment: exactly one wins.
pub async fn one_of_many_concurrent_claimers_wins(store: Store) {
    const CLAIMERS: usize = 64;
    let key = fresh_key("contended");
    let start = Arc::new(tokio::sync::Barrier::new(CLAIMERS));
    let tasks: Vec<_> = (0..CLAIMERS)
        .map(|_| {
            let (store, key, start) = (store.clone(), key.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                ask(&store, &key).await
            })
        })
        .collect();
    let (mut claimed, mut in_progress) = (0, 0);
    for task in tasks {
        match task.await.expect("claimer") {
            Claim::Claimed(_) => claimed += 1,
            Claim::InProgress { .. } => in_progress += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((claimed, in_progress), (1, CLAIMERS - 1));
}

/// Many keys, each claimed and completed once.
pub async fn many_keys(store: Store) {
    let scope = unique_name("many");
    for n in 0..200 {
        let key = IdempotencyKey::new(&scope, format!("message-{n}"));
        let token = claimed(&store, &key, LONG).await;
        store.complete(&token, LONG).await.expect("complete");
    }
    for n in 0..200 {
        let key = IdempotencyKey::new(&scope, format!("message-{n}"));
        assert!(ask(&store, &key).await.is_done(), "{n}");
    }
}

/// Bad keys and durations are typed errors naming the store.
pub async fn bad_input_is_refused(store: Store) {
    let url = store.url().to_owned();
    let bad_keys = [
        IdempotencyKey::new(unique_name("s"), ""),
        IdempotencyKey::new("", "k"),
        IdempotencyKey::new(
            unique_name("s"),
            "k".repeat(courier_idempotency::MAX_KEY_LEN + 1),
        ),
    ];
    for key in bad_keys {
        match store.claim(&key, LONG).await {
            Err(e @ Error::InvalidKey { .. }) => {
                assert!(e.to_string().contains(&url), "{e}");
                assert!(!e.is_retryable());
            }
            other => panic!("{key:?}: expected InvalidKey, got {other:?}"),
        }
    }
    let key = fresh_key("durations");
    match store.claim(&key, Duration::ZERO).await {
        Err(Error::InvalidDuration { what, url: u, .. }) => {
            assert_eq!((what, u.as_str()), ("lease", url.as_str()));
        }
        other => panic!("expected InvalidDuration, got {other:?}"),
    }
    let token = claimed(&store, &key, LONG).await;
    match store.complete(&token, Duration::ZERO).await {
        Err(Error::InvalidDuration { what, .. }) => assert_eq!(what, "retention"),
        other => panic!("expected InvalidDuration, got {other:?}"),
    }
    // The refused completion left the claim as it was.
    store.complete(&token, LONG).await.expect("complete");
}

/// One `#[tokio::test]` per case and backend.
macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let under_test = crate::common::store(stringify!($backend)).await;
                    crate::$case(under_test.store.clone()).await;
                }
            )*
        }
    };
}

macro_rules! every_case {
    ($backend:ident) => {
        suite!($backend:
            three_outcomes,
            stored_result_comes_back,
            release_frees_the_key,
            expired_lease_is_taken_over_and_fenced,
            expired_lease_cannot_complete,
            retention_ends,
            complete_is_repeatable_by_its_owner,
            scopes_are_independent,
            one_of_many_concurrent_claimers_wins,
            many_keys,
            bad_input_is_refused,
        );
    };
}

every_case!(memory);
#[cfg(feature = "sqlite")]
every_case!(sqlite);
#[cfg(feature = "postgres")]
every_case!(postgres);
#[cfg(feature = "redis")]
every_case!(redis);
