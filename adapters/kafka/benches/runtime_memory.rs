//! That the process's memory stays flat while a million messages go
//! through the consumer runtime on the Kafka-protocol broker (the test fixture), as on every
//! adapter: [`courier_testkit::bench_resident`].
//!
//! ```text
//! cargo bench -p courier-kafka --bench runtime_memory               # 1,000,000 messages
//! cargo bench -p courier-kafka --bench runtime_memory -- 200000     # or any count
//! ```
//!
//! The publisher keeps at most two batches of 1,000 ahead of the handler
//! (concurrency 16, 16 keys, the runtime's default prefetch); the resident
//! memory is sampled every tenth of the run. The bench exits with an error
//! when it grows by more than 16 MiB after the first tenth.

use courier_testkit::bench_resident::resident_bench;

fn main() {
    resident_bench("kafka", || async {
        let server = courier_testkit::fixtures::kafka()
            .await
            .expect("the Kafka-protocol broker fixture");
        // The session timeout of rdkafka's default: under load the test
        // broker answers heartbeats more than courier's default 10 s late,
        // and a member whose session times out on it may be left without
        // partitions.
        let url = format!("{}?connect_timeout=30s&session_timeout=45s", server.url());
        courier_kafka::KafkaBroker::connect(&url)
            .await
            .expect("connect")
            .into_broker()
    });
}
