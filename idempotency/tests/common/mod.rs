//! What the integration tests share: a store of each backend, and waiting
//! for a condition with a deadline.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_idempotency::{IdempotencyStore, StoreConfig};

/// A store under test and what keeps its server or file alive.
pub struct TestStore {
    pub store: Arc<dyn IdempotencyStore>,
    pub url: String,
    _keep: Keep,
}

enum Keep {
    Nothing,
    #[cfg(feature = "sqlite")]
    Dir(tempfile::TempDir),
    #[cfg(any(feature = "redis", feature = "postgres"))]
    Server(Arc<courier_testkit::fixtures::BrokerFixture>),
}

/// The backends compiled into this test build.
pub fn backends() -> Vec<&'static str> {
    let mut names = vec!["memory"];
    if cfg!(feature = "sqlite") {
        names.push("sqlite");
    }
    if cfg!(feature = "postgres") {
        names.push("postgres");
    }
    if cfg!(feature = "redis") {
        names.push("redis");
    }
    names
}

/// A store of `backend`: a fresh memory store, a fresh SQLite file, or the
/// PostgreSQL / Redis server shared by this test binary (tests keep apart
/// through unique scopes).
pub async fn store(backend: &str) -> TestStore {
    store_with(backend, StoreConfig::default()).await
}

/// [`store`] with settings.
pub async fn store_with(backend: &str, config: StoreConfig) -> TestStore {
    let (url, keep) = match backend {
        "memory" => ("memory://".to_owned(), Keep::Nothing),
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("idempotency.db").display());
            (url, Keep::Dir(dir))
        }
        #[cfg(feature = "postgres")]
        "postgres" => {
            let server = courier_testkit::fixtures::postgres()
                .await
                .expect("postgres fixture");
            (server.url().to_owned(), Keep::Server(server))
        }
        #[cfg(feature = "redis")]
        "redis" => {
            let server = courier_testkit::fixtures::redis()
                .await
                .expect("redis fixture");
            (server.url().to_owned(), Keep::Server(server))
        }
        other => panic!("backend {other} is not compiled in"),
    };
    let store = courier_idempotency::connect_with(&url, config)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    TestStore {
        store,
        url,
        _keep: keep,
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after
/// `deadline` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "{what}: not reached within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
