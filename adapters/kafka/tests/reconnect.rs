//! 100 concurrent publishers while the server is restarted twice, with
//! publishes confirmed before and after each restart: every message whose
//! publish returned `Ok` is received
//! (`courier_testkit::fixtures::restarts_under_load`). The broker keeps its
//! topics, records and committed offsets across a restart; the producer and
//! the consumer reconnect by themselves.

use std::time::Duration;

use courier_kafka::{KafkaBroker, KafkaConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_under_load_lose_no_confirmed_message() {
    let server = courier_testkit::fixtures::fresh_kafka()
        .await
        .expect("own kafka container");
    let config = KafkaConfig::from_url(server.url())
        .expect("url")
        .publish_timeout(Duration::from_secs(20));
    let broker = KafkaBroker::connect_with(config).await.expect("connect");
    courier_testkit::fixtures::restarts_under_load("kafka", broker.into_broker(), &server).await;
}
