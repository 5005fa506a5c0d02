//! Request/reply round trips in process: courier (`Broker::request` on the
//! in-process broker, answered by a `runtime::responder` consumer) against
//! the Rust idiom for asking another task, a `tokio::sync::mpsc` channel of
//! requests each carrying a `oneshot` sender for its reply, answered by one
//! task. Both sides move the same JSON body (decoded and encoded again by
//! the responder), in one run.
//!
//! The in-process broker has no wire, so this is what courier's request
//! path costs on its own: the request's message and id, the pending-reply
//! table and timeout, the consumer runtime around the responder (middleware,
//! JSON envelopes, concurrency 64) and the reply's message.
//!
//! `cargo bench -p courier-memory --bench request_reply`; `-- ROUNDS` (or
//! `COURIER_BENCH_ROUNDS`) sets the interleaved rounds per concurrency
//! (default 5). Rows as in [`courier_testkit::bench_request::compare`]:
//! `request c=N` in round trips a second, `request c=N p50`/`p99` in
//! microseconds, `cpu/req` in CPU microseconds of the whole process per
//! round trip.

use bytes::Bytes;
use courier_memory::MemoryBroker;
use courier_testkit::bench::Report;
use courier_testkit::bench_request::{
    self, CourierPair, PER_TASK, Ping, RoundFuture, RoundTrips, measure, ping,
};
use tokio::sync::{mpsc, oneshot};

fn main() {
    let rounds = courier_testkit::bench::rounds(5);
    let runtime = courier_testkit::bench::runtime();
    runtime.block_on(async move {
        let broker = MemoryBroker::new().into_broker();
        let courier = CourierPair::start(&broker, broker.clone(), "bench-request-reply").await;
        let raw = Channel::start();
        bench_request::warm_up(&[&raw, &courier]).await;
        let mut report = Report::new(format!(
            "in-process request/reply, {} B JSON bodies, {rounds} rounds per concurrency, \
             2 worker threads",
            bench_request::body_size()
        ));
        bench_request::compare(
            &mut report,
            "memory",
            rounds,
            "",
            &PER_TASK,
            Some(&raw),
            &courier,
        )
        .await;
        report.finish();
        courier.stop().await;
    });
}

/// A request: the JSON body and where its reply goes.
type Asked = (Bytes, oneshot::Sender<Bytes>);

/// The channel idiom: requests over an `mpsc` channel to one responder
/// task, replies over a `oneshot` each.
struct Channel {
    requests: mpsc::Sender<Asked>,
}

impl Channel {
    fn start() -> Self {
        let (requests, mut asked) = mpsc::channel::<Asked>(1024);
        tokio::spawn(async move {
            while let Some((body, reply)) = asked.recv().await {
                let ping: Ping = serde_json::from_slice(&body).expect("decode");
                let answer = serde_json::to_vec(&ping).expect("encode");
                // The asker may have given up; its reply is then dropped.
                let _ = reply.send(answer.into());
            }
        });
        Channel { requests }
    }
}

impl RoundTrips for Channel {
    fn round(&self, concurrency: usize, per_task: usize) -> RoundFuture<'_> {
        let requests = self.requests.clone();
        Box::pin(measure(concurrency, per_task, move |seq| {
            let requests = requests.clone();
            async move {
                let body = serde_json::to_vec(&ping(seq)).expect("encode");
                let (reply, answered) = oneshot::channel();
                requests
                    .send((body.into(), reply))
                    .await
                    .expect("responder running");
                bench_request::check_reply(seq, answered).await;
            }
        }))
    }
}
