//! Request/reply round trips on Kafka through courier (`Broker::request`
//! answered by a `runtime::responder` consumer), on the test broker.
//!
//! Kafka has no request/reply idiom of its own: neither the protocol nor
//! rdkafka offers one, and the usual hand-written pattern (requests to a
//! topic, replies to a topic per requester read by a consumer assigned to
//! its partitions without a group, matched by a correlation header) is what
//! courier-kafka does. So the rows have courier's figures only; the raw
//! column and the ratio are empty. They show what a round trip costs on
//! this broker, so a service can tell whether Kafka suits its synchronous
//! calls. Consumers fetch with a 5 ms wait ([`FETCH_WAIT`]): the test
//! broker answers a waiting fetch only once the wait is over.
//!
//! `cargo bench -p courier-kafka --bench request_reply` (starts the Kafka
//! fixture container; `COURIER_TEST_KAFKA_URL` uses a running broker
//! instead). `-- ROUNDS` (or `COURIER_BENCH_ROUNDS`) sets the rounds per
//! concurrency (default 5); `COURIER_BENCH_KAFKA_REQUESTS` the round trips
//! per round (default 200, split over the tasks at concurrency 64). Rows
//! as in [`courier_testkit::bench_request::compare`].

use courier_core::Broker;
use courier_kafka::{KafkaBroker, KafkaConfig};
use courier_testkit::bench::{Report, env_or};
use courier_testkit::bench_request::{self, CourierPair};
use courier_testkit::fixtures::unique_name;

fn main() {
    let rounds = courier_testkit::bench::rounds(5);
    let requests = env_or("COURIER_BENCH_KAFKA_REQUESTS", 200).max(64);
    let runtime = courier_testkit::bench::runtime();
    runtime.block_on(async move {
        let server = courier_testkit::fixtures::kafka()
            .await
            .expect("Kafka fixture");
        let url = server.url().to_owned();
        let responding = connect(&url).await;
        let requester = connect(&url).await;
        let courier =
            CourierPair::start(&responding, requester, unique_name("bench-courier-rr")).await;
        bench_request::warm_up(&[&courier]).await;
        let mut report = Report::new(format!(
            "Kafka (test broker) request/reply, courier only, {} B JSON bodies, {requests} \
             round trips per round, {rounds} rounds per concurrency, 2 worker threads",
            bench_request::body_size()
        ));
        let shapes = [(1, requests), (64, requests / 64)];
        bench_request::compare(&mut report, "kafka", rounds, "", &shapes, None, &courier).await;
        report.finish();
        courier.stop().await;
        responding.close().await.expect("close");
    });
}

/// How long a fetch waits for records: the test broker answers a waiting
/// fetch only when the wait is over, not when records arrive, so with
/// rdkafka's 500 ms every round trip took half a second (502 ms p50 at
/// c=1) whatever the clients did.
const FETCH_WAIT: &str = "5";

async fn connect(url: &str) -> Broker {
    let config = KafkaConfig::from_url(url)
        .expect("url")
        .rdkafka("fetch.wait.max.ms", FETCH_WAIT);
    KafkaBroker::connect_with(config)
        .await
        .expect("connect")
        .into_broker()
}
