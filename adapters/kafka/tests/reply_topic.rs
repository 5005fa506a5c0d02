//! A connection's reply topic against the real broker: created by its
//! first request, its reader stopped when the connection closes, and the
//! topic deleted then where `delete_reply_topic` asks for it; a responder
//! serving requesters that close goes on.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use courier_core::request::RequestError;
use courier_core::{Message, Subscription};
use courier_kafka::KafkaBroker;
use courier_testkit::fixtures::{self, unique_name};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The tests of this binary one at a time: the first tells its reply
/// topic from the others by listing them before and after.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The reply topics the broker lists now.
fn reply_topics(bootstrap: &str) -> HashSet<String> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let metadata = client
        .fetch_metadata(None, Duration::from_secs(30))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with("courier-replies.") && t.error().is_none())
        .map(|t| t.name().to_owned())
        .collect()
}

async fn listed(bootstrap: &str) -> HashSet<String> {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || reply_topics(&bootstrap))
        .await
        .expect("metadata task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stops_the_reply_reader_and_deletes_the_reply_topic_when_asked() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = fixtures::kafka().await.expect("kafka fixture");
    let url = format!(
        "{}?connect_timeout=30s&delete_reply_topic=true",
        server.url()
    );
    let bootstrap = url
        .trim_start_matches("kafka://")
        .split('?')
        .next()
        .expect("bootstrap")
        .to_owned();
    let before = listed(&bootstrap).await;

    let broker = KafkaBroker::connect(&url)
        .await
        .expect("connect")
        .into_broker();
    // Nobody answers: the request times out, its reply topic stays.
    let sub = Subscription::new(unique_name("ask"), unique_name("responders"));
    broker.provision(&sub).await.expect("provision");
    let outcome = broker
        .request(
            sub.topic(),
            Message::new("unanswered"),
            Duration::from_secs(2),
        )
        .await;
    assert!(
        matches!(outcome, Err(RequestError::Timeout { .. })),
        "{outcome:?}"
    );
    let ours: Vec<String> = listed(&bootstrap)
        .await
        .difference(&before)
        .cloned()
        .collect();
    assert_eq!(ours.len(), 1, "one new reply topic: {ours:?}");
    let ours = ours.into_iter().next().expect("one");
    assert_eq!(reply_readers(), 1, "the reply reader runs");

    let started = Instant::now();
    let closed = broker.close().await;
    eprintln!("close took {:.2?}: {closed:?}", started.elapsed());
    closed.expect("close");
    assert_eq!(
        reply_readers(),
        0,
        "close waited for the reply reader to end"
    );

    // Deletion may take effect asynchronously: poll the metadata.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut polls = 0;
    while listed(&bootstrap).await.contains(&ours) {
        polls += 1;
        assert!(
            Instant::now() < deadline,
            "{ours} still listed 30 s after close ({polls} looks)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{ours} gone after close ({polls} extra looks)");
}

/// Threads of this process reading a reply topic (named
/// `courier-kafka-replies`, which Linux shortens to 15 bytes).
fn reply_readers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "courier-kafka-r")
        .count()
}

/// A responder keeps serving requesters after one it answered closed (its
/// reply topic stays: `delete_reply_topic` is off by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_outlives_a_requester_that_closes() {
    use courier_core::runtime::{self, Consumer, Envelope};

    let _alone = ONE_AT_A_TIME.lock().await;
    let server = fixtures::kafka().await.expect("kafka fixture");
    let url = format!("{}?connect_timeout=30s", server.url());
    let responding = KafkaBroker::connect(&url)
        .await
        .expect("connect")
        .into_broker();
    let sub = Subscription::new(unique_name("ask"), unique_name("responders"));
    let echo = runtime::responder(&responding, |asked: Envelope<String>| async move {
        Ok(asked.body)
    });
    let responder = Consumer::builder(responding.clone(), sub.clone(), echo)
        .start()
        .await
        .expect("responder");

    for round in 0..2 {
        let requester = KafkaBroker::connect(&url)
            .await
            .expect("connect")
            .into_broker();
        let asked = format!("round {round}");
        let answer: String = requester
            .request_json(sub.topic(), &asked, Duration::from_secs(60))
            .await
            .expect("answered");
        assert_eq!(answer, asked);
        requester.close().await.expect("close the requester");
        eprintln!("round {round}: answered, requester closed");
    }
    // The second round was answered after the first requester had closed;
    // the responder handled both requests, each once, and nothing failed.
    let stats = responder.shutdown().await.expect("responder shutdown");
    assert_eq!((stats.handled, stats.failed), (2, 0), "{stats:?}");
    responding.close().await.expect("close the responder");
}
