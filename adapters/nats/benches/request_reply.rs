//! Request/reply round trips: courier (`Broker::request` answered by a
//! `runtime::responder` consumer) against async-nats's own idiom
//! (`Client::request` answered by a core subscriber), on the same server,
//! in one run.
//!
//! Both go over core NATS both ways (at most once): courier's request to
//! the topic's request subject, where the responder listens as a queue
//! group, its reply to the requester's inbox. The responder side differs
//! in what it is: a consumer runtime at concurrency 64 (middleware, JSON
//! envelopes, request headers) against a bare receive loop.
//!
//! Two more comparisons split courier's cost between its sides: courier's
//! requester against a bare responder (a queue subscriber on courier's
//! request subject that echoes the request's headers back), and the raw
//! requester against courier's responder (rows marked `requester only` and
//! `responder only`); each is compared with the raw pair in the same
//! interleaved way.
//!
//! A courier request carries its fields (ids, timestamp, deadline) in the
//! last token of its reply subject and no header; its reply carries them
//! in one NATS header, which the raw idiom does not. The rows marked `raw
//! with one header` compare the full courier round trip with a raw pair
//! whose request carries one header of that size and whose responder
//! echoes it: what carrying a message's metadata in headers both ways
//! costs the client on its own.
//!
//! The rows marked `raw against raw` run the raw idiom on both sides (two
//! raw pairs on connections of their own, as courier's pair has), in the
//! same interleaved rounds: their ratio is what the machine and the server
//! alone do to a ratio, so a courier ratio inside its spread says nothing
//! about courier.
//!
//! `cargo bench -p courier-nats --bench request_reply` (starts its own
//! NATS container; `COURIER_TEST_NATS_URL` uses a running server instead).
//! `-- requester` (or `responder`, `header`, `against`, `full`) runs only the
//! comparisons whose label holds the word (`full`: the plain one).
//! `-- ROUNDS` (or `COURIER_BENCH_ROUNDS`) sets the rounds per concurrency (default 5); the sides
//! alternate who goes first, and the medians of the rounds are compared
//! (`request c=N p50`/`p99` in microseconds, `request c=N` in requests per
//! second, `request c=N cpu/req` in CPU microseconds of the whole process,
//! requester and responder, per round trip: what holds on a busy machine).

use courier_nats::NatsBroker;
use courier_testkit::bench::Report;
use courier_testkit::bench_request::{
    self, CourierPair, PER_TASK, Ping, RoundFuture, RoundTrips, measure, ping,
};
use futures::StreamExt;

fn main() {
    let rounds = courier_testkit::bench::rounds(5);
    let runtime = courier_testkit::bench::runtime();
    runtime.block_on(async move {
        let server = courier_testkit::fixtures::nats().await.expect("nats fixture");
        let url = server.url().to_owned();
        let raw = RawSide::start(&url, None).await;
        let raw_with_header = RawSide::start(&url, Some(FIELDS_LIKE_COURIERS)).await;
        // A second plain raw pair, on connections of its own as courier's
        // pair has: the other side of the raw-against-raw rows.
        let raw_twin = RawSide::start(&url, None).await;
        let responding = NatsBroker::connect(&url)
            .await
            .expect("connect")
            .into_broker();
        let requester = NatsBroker::connect(&url)
            .await
            .expect("connect")
            .into_broker();
        let courier = CourierPair::start(
            &responding,
            requester.clone(),
            courier_testkit::fixtures::unique_name("bench-courier-rr"),
        )
        .await;
        // The same requester, asking a topic a bare async-nats queue
        // subscriber answers: it echoes the request's headers, if any (a
        // plain courier request has none), with the re-encoded body.
        let bare_topic = courier_testkit::fixtures::unique_name("bench-bare-responder");
        start_bare_responder(
            &url,
            courier_nats::request_subject(&bare_topic),
            Some("bench"),
            true,
        )
        .await;
        let requester_only = CourierPair::asking(requester, bare_topic);
        let responder_only = RawSide {
            client: raw.client.clone(),
            subject: courier_nats::request_subject(courier.topic()),
            header: None,
        };
        bench_request::warm_up(&[
            &raw,
            &raw_with_header,
            &raw_twin,
            &courier,
            &requester_only,
            &responder_only,
        ])
        .await;

        let mut report = Report::new(format!(
            "NATS request/reply, {} B JSON bodies, {rounds} rounds per concurrency, 2 worker threads",
            bench_request::body_size()
        ));
        let variants: [(&str, &RawSide, &dyn RoundTrips); 5] = [
            ("", &raw, &courier),
            (courier_testkit::bench::against_itself(true), &raw, &raw_twin),
            (" (courier requester only)", &raw, &requester_only),
            (" (courier responder only)", &raw, &responder_only),
            (" (raw with one header)", &raw_with_header, &courier),
        ];
        // Words on the command line pick comparisons by their row label
        // (`full`, `against`, `requester`, `responder`, `header`); none
        // runs all.
        let picked: Vec<String> = std::env::args()
            .skip(1)
            // Not counts, nor the `--bench` that `cargo bench` passes.
            .filter(|a| a.parse::<usize>().is_err() && !a.starts_with('-'))
            .collect();
        let wanted = |variant: &str| {
            picked.is_empty()
                || picked
                    .iter()
                    .any(|p| variant.contains(p.as_str()) || (p == "full" && variant.is_empty()))
        };
        for (variant, raw, courier) in variants.into_iter().filter(|(v, ..)| wanted(v)) {
            bench_request::compare(
                &mut report,
                "nats",
                rounds,
                variant,
                &PER_TASK,
                Some(raw),
                courier,
            )
            .await;
        }
        report.finish();
        courier.stop().await;
        responding.close().await.expect("close");
    });
}

/// Starts a bare responder on `subject` (in queue group `queue`, if
/// given): it answers each request with its body decoded and encoded again,
/// echoing the request's headers when `echo_headers` and it has any.
/// Returns once the server has the subscription.
async fn start_bare_responder(url: &str, subject: String, queue: Option<&str>, echo_headers: bool) {
    let responder = async_nats::connect(url).await.expect("connect");
    let mut requests = match queue {
        Some(queue) => responder.queue_subscribe(subject, queue.to_owned()).await,
        None => responder.subscribe(subject).await,
    }
    .expect("subscribe");
    responder.flush().await.expect("flush");
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply else { continue };
            let body: Ping = serde_json::from_slice(&request.payload).expect("decode");
            let answer = serde_json::to_vec(&body).expect("encode");
            let sent = match request.headers.filter(|_| echo_headers) {
                Some(headers) => {
                    responder
                        .publish_with_headers(reply, headers, answer.into())
                        .await
                }
                None => responder.publish(reply, answer.into()).await,
            };
            sent.expect("reply");
        }
    });
}

/// async-nats's idiom: `Client::request` to a core subscriber that answers
/// each message's reply subject.
struct RawSide {
    client: async_nats::Client,
    subject: String,
    /// A `courier-fields` value every request carries (and its responder
    /// echoes), or none: the plain idiom.
    header: Option<&'static str>,
}

/// A `courier-fields` header value of the size a courier request carries
/// (id, timestamp, deadline).
const FIELDS_LIKE_COURIERS: &str =
    "id=0198c6a2-7f3e-7d2a-9b1c-3e4f5a6b7c8d;ts=1764200000000;dl=1764200005000;";

impl RawSide {
    /// A raw pair on a subject of its own; with `header`, every request
    /// carries it as `courier-fields` and the responder echoes it.
    async fn start(url: &str, header: Option<&'static str>) -> Self {
        let subject = courier_testkit::fixtures::unique_name("bench-raw-rr");
        start_bare_responder(url, subject.clone(), None, header.is_some()).await;
        let client = async_nats::connect(url).await.expect("connect");
        RawSide {
            client,
            subject,
            header,
        }
    }
}

impl RoundTrips for RawSide {
    fn round(&self, concurrency: usize, per_task: usize) -> RoundFuture<'_> {
        let client = self.client.clone();
        let subject = self.subject.clone();
        let header = self.header;
        Box::pin(measure(concurrency, per_task, move |seq| {
            let (client, subject) = (client.clone(), subject.clone());
            async move {
                let body = serde_json::to_vec(&ping(seq)).expect("encode");
                let reply = match header {
                    Some(fields) => {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("courier-fields", fields);
                        client
                            .request_with_headers(subject, headers, body.into())
                            .await
                    }
                    None => client.request(subject, body.into()).await,
                }
                .expect("reply");
                bench_request::check_body(seq, &reply.payload);
            }
        }))
    }
}
