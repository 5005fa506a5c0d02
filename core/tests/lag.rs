//! Consumer lag read in the background by a running consumer, its status,
//! and the bound on a lag read that never gets an answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_core::runtime::{self, Consumer, ConsumerState, ConsumerStatus, RunningConsumer};
use courier_core::telemetry::{Lag, lag_within};
use courier_core::{
    Close, DeliveryStream, Error, Message, Publisher, Result, Subscriber, Subscription, async_trait,
};
use courier_memory::MemoryBroker;
use tokio::sync::Semaphore;

/// Waits until `check` holds for the consumer's status (progress-based,
/// at most 10 s) and returns that status.
async fn wait_for(
    consumer: &RunningConsumer,
    check: impl Fn(&ConsumerStatus) -> bool,
) -> ConsumerStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = consumer.status();
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "status stuck at {status:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reports_its_lag_and_state() {
    let broker = MemoryBroker::new().into_broker();
    let gate = Arc::new(Semaphore::new(0));
    let consumer = Consumer::builder(
        &broker,
        Subscription::new("orders", "billing"),
        runtime::raw({
            let gate = gate.clone();
            move |_: Message| {
                let gate = gate.clone();
                async move {
                    gate.acquire().await?.forget();
                    Ok(())
                }
            }
        }),
    )
    .concurrency(1)
    .report_lag(Duration::from_millis(10), Duration::from_secs(1))
    .start()
    .await
    .unwrap();
    assert_eq!(consumer.status().state, ConsumerState::Running);
    for i in 0..5 {
        broker
            .publish("orders", Message::new(format!("{i}")))
            .await
            .unwrap();
    }
    // One held by the handler, the rest queued or prefetched: all five unsettled.
    let held = wait_for(&consumer, |s| s.lag == Some(5) && s.running == 1).await;
    assert_eq!(held.state, ConsumerState::Running);
    assert!(held.in_flight >= 1, "{held:?}");
    gate.add_permits(5);
    let drained = wait_for(&consumer, |s| s.lag == Some(0)).await;
    assert_eq!(drained.state, ConsumerState::Running);
    consumer.trigger_shutdown();
    let stopping = consumer.status().state;
    assert!(
        matches!(stopping, ConsumerState::Stopping | ConsumerState::Stopped),
        "{stopping:?}"
    );
    let stats = consumer.shutdown().await.unwrap();
    assert_eq!(stats.handled, 5);
}

/// A subscriber whose broker never answers a lag request; counts the lag
/// reads started.
#[derive(Debug)]
struct Unanswering(MemoryBroker, AtomicU64);

#[async_trait]
impl Close for Unanswering {
    async fn close(&self) -> Result<()> {
        self.0.close().await
    }
}

#[async_trait]
impl Subscriber for Unanswering {
    async fn provision(&self, subscription: &Subscription) -> Result<()> {
        self.0.provision(subscription).await
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        self.0.subscribe(subscription).await
    }

    async fn lag(&self, _: &str, _: &str) -> Result<Lag> {
        self.1.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lag_read_that_gets_no_answer_is_a_timeout_and_nothing_waits_for_it() {
    let memory = MemoryBroker::new();
    let silent: Arc<Unanswering> =
        Arc::new(Unanswering(memory.new_connection(), AtomicU64::new(0)));
    let bound = Duration::from_millis(100);
    match lag_within(&*silent, "orders", "billing", bound).await {
        Err(Error::Timeout { operation, after }) => {
            assert_eq!((operation, after), ("lag", bound));
        }
        other => panic!("expected a lag timeout, got {other:?}"),
    }
    // A consumer reading lag from it keeps handling messages, reports no
    // lag, and shuts down.
    let (done, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = Consumer::builder(
        silent.clone(),
        Subscription::new("orders", "billing"),
        runtime::raw(move |_: Message| {
            let done = done.clone();
            async move {
                done.send(())?;
                Ok(())
            }
        }),
    )
    .report_lag(Duration::from_millis(10), bound)
    .start()
    .await
    .unwrap();
    memory.publish("orders", Message::new("x")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), done_rx.recv())
        .await
        .expect("handled while lag reads time out")
        .unwrap();
    // Two more reads started after the one above: the consumer's first
    // timed out and it went on reading.
    let deadline = Instant::now() + Duration::from_secs(10);
    while silent.1.load(Ordering::SeqCst) < 3 {
        assert!(
            Instant::now() < deadline,
            "the consumer stopped reading lag"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(consumer.status().lag, None);
    let stats = tokio::time::timeout(Duration::from_secs(10), consumer.shutdown())
        .await
        .expect("the shutdown does not wait for the lag read")
        .unwrap();
    assert_eq!(stats.handled, 1);
}
