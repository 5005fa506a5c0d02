//! Consumer runtime behaviour specific to configurations the conformance
//! cases do not cover: concurrency 1, layered stacks, `run_until`, and the
//! stream ending under the consumer.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_core::runtime::{
    self, Consumer, HandlerResult, Hook, HookLayer, Request, RetryPolicy, TimeoutLayer,
};
use courier_core::{Message, Subscription, async_trait};
use courier_memory::MemoryBroker;

#[derive(Default)]
struct CountOutcomes {
    ok: AtomicU32,
    failed: AtomicU32,
}

#[async_trait]
impl Hook for CountOutcomes {
    async fn after(&self, _request: &Request<'_>, outcome: HandlerResult) -> HandlerResult {
        let counter = if outcome.is_ok() {
            &self.ok
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::SeqCst);
        outcome
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_one_handles_in_publish_order_through_layers() {
    let broker = MemoryBroker::new().into_broker();
    let sub = Subscription::new("serial", "g");
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let panicked = Arc::new(AtomicU32::new(0));
    let handler = {
        let (seen, panicked) = (seen.clone(), panicked.clone());
        runtime::typed(move |n: u32| {
            let (seen, panicked) = (seen.clone(), panicked.clone());
            async move {
                if n == 5 && panicked.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first attempt at 5");
                }
                if n.is_multiple_of(10) {
                    tokio::task::yield_now().await;
                }
                seen.lock().unwrap().push(n);
                Ok(())
            }
        })
    };
    let hook = Arc::new(CountOutcomes::default());
    let consumer = Consumer::builder(&broker, sub.clone(), handler)
        .concurrency(1)
        .retry(RetryPolicy::exponential().min_delay(Duration::from_millis(1)))
        .layer(HookLayer::from_arc(hook.clone()))
        .layer(TimeoutLayer::new(Duration::from_secs(10)))
        .build();
    broker.provision(consumer.subscription()).await.unwrap();
    let metrics = consumer.metrics();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run_until(async {
        let _ = done_rx.await;
    }));
    let batch = (0..100u32)
        .map(|n| Message::from_json(&n).unwrap())
        .collect();
    broker.publish_batch(sub.topic(), batch).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metrics.snapshot().handled < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 100 handled within 30 s",
            metrics.snapshot().handled
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    done_tx.send(()).unwrap();
    let stats = running.await.unwrap().unwrap();
    assert_eq!((stats.handled, stats.failed, stats.retried), (100, 1, 1));
    assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<_>>());
    // The panic reached the hook as a failure.
    assert_eq!(hook.ok.load(Ordering::SeqCst), 100);
    assert_eq!(hook.failed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_closed_subscriber_ends_the_run_cleanly() {
    let broker = MemoryBroker::new().into_broker();
    let sub = Subscription::new("ends", "g");
    let consumer =
        Consumer::builder(&broker, sub.clone(), runtime::raw(|_m| async { Ok(()) })).build();
    broker.provision(consumer.subscription()).await.unwrap();
    let metrics = consumer.metrics();
    let running = tokio::spawn(consumer.run());
    let batch = (0..3).map(|n| Message::new(n.to_string())).collect();
    broker.publish_batch(sub.topic(), batch).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.snapshot().handled < 3 {
        assert!(tokio::time::Instant::now() < deadline, "3 handled");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    broker.close().await.unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the run ends with the stream")
        .unwrap()
        .unwrap();
    assert_eq!((stats.handled, stats.in_flight), (3, 0));
}

#[tokio::test]
async fn an_app_whose_consumers_all_end_returns_without_its_trigger() {
    let broker = MemoryBroker::new().into_broker();
    let mut app = runtime::App::new();
    for topic in ["first", "second"] {
        app = app.consumer(Consumer::builder(
            &broker,
            Subscription::new(topic, "g"),
            runtime::raw(|_m| async { Ok(()) }),
        ));
    }
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(app.run_until(async move {
        let _ = started_tx.send(());
        std::future::pending::<()>().await
    }));
    // The trigger is polled once both consumers are subscribed.
    started_rx.await.unwrap();
    // Each consumer handles a message before the close: an app whose
    // consumers never ran would otherwise end the same way.
    let groups = ["first", "second"].map(|topic| Subscription::new(topic, "g"));
    for sub in &groups {
        broker
            .publish(sub.topic(), Message::new("one"))
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for sub in &groups {
        while broker.lag(sub.topic(), sub.group()).await.unwrap().total > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not handled within 10 s",
                sub.topic()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    broker.close().await.unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the app returns once every consumer has ended")
        .unwrap()
        .unwrap();
    assert_eq!(stats.len(), 2);
    assert!(
        stats.iter().all(|s| s.in_flight == 0 && s.handled == 1),
        "{stats:?}"
    );
}

/// A handler closure that panics before it returns its future (in its
/// body, not in the `async` block) fails that attempt like any panic: the
/// message is retried and the consumer keeps running. Checked on both of
/// the runtime's paths: the handler called with its own type (no layers),
/// and a layered, type-erased stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_before_the_handler_future_exists_is_a_failed_attempt() {
    for (layered, concurrency) in [(false, 1), (false, 4), (true, 1), (true, 4)] {
        let broker = MemoryBroker::new().into_broker();
        let sub = Subscription::new("sync-panic", "g");
        let calls = Arc::new(AtomicU32::new(0));
        let handler = {
            let calls = calls.clone();
            runtime::raw(move |message: Message| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                assert!(call != 2, "panics in the third call, before its future");
                async move {
                    drop(message);
                    Ok(())
                }
            })
        };
        let mut builder = Consumer::builder(&broker, sub.clone(), handler)
            .concurrency(concurrency)
            .retry(RetryPolicy::exponential().min_delay(Duration::from_millis(1)));
        if layered {
            builder = builder.layer(TimeoutLayer::new(Duration::from_secs(10)));
        }
        let consumer = builder.build();
        broker.provision(consumer.subscription()).await.unwrap();
        let metrics = consumer.metrics();
        let running = consumer.start().await.unwrap();
        let batch = (0..5).map(|n| Message::new(n.to_string())).collect();
        broker.publish_batch(sub.topic(), batch).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while metrics.snapshot().handled < 5 {
            assert!(
                tokio::time::Instant::now() < deadline && !running.is_finished(),
                "layered {layered}, c={concurrency}: {} of 5 handled, consumer finished: {}",
                metrics.snapshot().handled,
                running.is_finished()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let stats = running.shutdown().await.unwrap();
        assert_eq!(
            (
                stats.handled,
                stats.failed,
                stats.retried,
                stats.dead_lettered
            ),
            (5, 1, 1, 0),
            "layered {layered}, c={concurrency}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }
}
