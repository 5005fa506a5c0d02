//! That the process's memory stays flat while a million messages go
//! through the consumer runtime on RabbitMQ (the test fixture), as on every
//! adapter: [`courier_testkit::bench_resident`].
//!
//! ```text
//! cargo bench -p courier-amqp --bench runtime_memory               # 1,000,000 messages
//! cargo bench -p courier-amqp --bench runtime_memory -- 200000     # or any count
//! ```
//!
//! The publisher keeps at most two batches of 1,000 ahead of the handler
//! (concurrency 16, 16 keys, the runtime's default prefetch); the resident
//! memory is sampled every tenth of the run. The bench exits with an error
//! when it grows by more than 16 MiB after the first tenth.

use courier_testkit::bench_resident::resident_bench;

fn main() {
    resident_bench("amqp", || async {
        let server = courier_testkit::fixtures::rabbitmq()
            .await
            .expect("RabbitMQ fixture");
        courier_amqp::AmqpBroker::connect(server.url())
            .await
            .expect("connect")
            .into_broker()
    });
}
