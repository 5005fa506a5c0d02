//! Request/reply with plain NATS clients on the other side: a request that
//! travelled through JetStream is answered over core NATS to its reply
//! address, and a plain core NATS request to a topic's request subject is
//! answered by a courier responder.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use courier_core::request::headers::{REPLY_STATUS, REPLY_TO, REQUEST_ID};
use courier_core::runtime::{self, Consumer, Envelope};
use courier_core::{Subscriber, Subscription};
use courier_nats::{NatsBroker, request_subject};
use futures::StreamExt;

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u32,
}

/// Milliseconds since the Unix epoch, as courier writes deadlines.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
}

async fn responder(broker: &NatsBroker, topic: &str) -> runtime::RunningConsumer {
    counted_responder(broker, topic).await.0
}

/// A responder that answers order `n` with order `n + 1000`, and the
/// count of its handler's calls.
async fn counted_responder(
    broker: &NatsBroker,
    topic: &str,
) -> (runtime::RunningConsumer, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let answer = runtime::responder(broker, move |order: Envelope<Order>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            Ok(Order {
                id: order.body.id + 1000,
            })
        }
    });
    let running = Consumer::builder(
        Arc::new(broker.clone()),
        Subscription::new(topic, "answers"),
        answer,
    )
    .start()
    .await
    .expect("responder");
    (running, calls)
}

#[tokio::test]
async fn a_request_stored_in_jetstream_is_answered_over_core_nats() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    let topic = courier_testkit::fixtures::unique_name("rr-stored");
    Subscriber::provision(&broker, &Subscription::new(&topic, "answers"))
        .await
        .expect("provision");
    let running = responder(&broker, &topic).await;

    let client = async_nats::connect(server.url()).await.expect("connect");
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
    client.flush().await.expect("flush");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(REPLY_TO, inbox.as_str());
    headers.insert(REQUEST_ID, "stored-1");
    // What courier writes on every message: without it the reserved
    // request headers of another producer are not trusted.
    headers.insert("Nats-Msg-Id", "stored-1");
    headers.insert("courier-timestamp-ms", "1700000000000");
    let js = async_nats::jetstream::new(client.clone());
    js.publish_with_headers(topic.clone(), headers, br#"{"id":7}"#.as_slice().into())
        .await
        .expect("publish")
        .await
        .expect("stored");

    let reply = tokio::time::timeout(Duration::from_secs(15), replies.next())
        .await
        .expect("a reply within 15 s")
        .expect("subscription open");
    let header = |name: &str| {
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    assert_eq!(header(REQUEST_ID).as_deref(), Some("stored-1"));
    // A successful reply carries no status; courier's fields travel packed.
    assert_eq!(header(REPLY_STATUS), None);
    let fields = header("courier-fields").expect("courier's fields");
    assert!(fields.contains("ct=application/json;"), "{fields}");
    assert!(fields.contains("cause=stored-1;"), "{fields}");
    let order: Order = serde_json::from_slice(&reply.payload).expect("decode");
    assert_eq!(order, Order { id: 1007 });
    let stats = running.shutdown().await.expect("shutdown");
    assert_eq!((stats.handled, stats.dead_lettered), (1, 0));
}

#[tokio::test]
async fn a_plain_nats_request_is_answered_and_unheard_ones_get_no_responders() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    let topic = courier_testkit::fixtures::unique_name("rr-plain");
    let client = async_nats::connect(server.url()).await.expect("connect");

    let unheard = client
        .request(request_subject(&topic), br#"{"id":1}"#.as_slice().into())
        .await
        .expect_err("nobody listens yet");
    assert_eq!(unheard.kind(), async_nats::RequestErrorKind::NoResponders);

    let running = responder(&broker, &topic).await;
    let reply = client
        .request(request_subject(&topic), br#"{"id":2}"#.as_slice().into())
        .await
        .expect("answered");
    let order: Order = serde_json::from_slice(&reply.payload).expect("decode");
    assert_eq!(order, Order { id: 1002 });
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn an_expired_request_over_core_nats_is_not_processed() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    let topic = courier_testkit::fixtures::unique_name("rr-expired");
    let (running, calls) = counted_responder(&broker, &topic).await;

    // Two requests in courier's packed forms (the fields in a header, and
    // in the reply subject) whose deadline (1 ms after the Unix epoch) has
    // long passed, then a fresh one on the same connection.
    let client = async_nats::connect(server.url()).await.expect("connect");
    let inbox = client.new_inbox();
    let mut expired_replies = client
        .subscribe(format!("{inbox}.>"))
        .await
        .expect("subscribe");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("courier-fields", "id=expired-1;ct=application/json;dl=1;");
    client
        .publish_with_reply_and_headers(
            request_subject(&topic),
            format!("{inbox}.1"),
            headers,
            br#"{"id":1}"#.as_slice().into(),
        )
        .await
        .expect("publish");
    client
        .publish_with_reply(
            request_subject(&topic),
            format!("{inbox}.2.courier:id=expired-2;ct=application/json;dl=1;"),
            br#"{"id":1}"#.as_slice().into(),
        )
        .await
        .expect("publish");
    let reply = client
        .request(request_subject(&topic), br#"{"id":2}"#.as_slice().into())
        .await
        .expect("the fresh request is answered");
    let order: Order = serde_json::from_slice(&reply.payload).expect("decode");
    assert_eq!(order, Order { id: 1002 });

    let stats = running.shutdown().await.expect("shutdown");
    assert_eq!(stats.handled, 3, "all three requests settled");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "neither expired request was processed"
    );
    client.flush().await.expect("flush");
    assert!(
        futures::FutureExt::now_or_never(expired_replies.next()).is_none(),
        "nobody answered the expired requests"
    );
}

#[tokio::test]
async fn a_courier_request_carries_its_fields_in_its_reply_subject_or_in_one_header() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let topic = courier_testkit::fixtures::unique_name("rr-wire");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let mut requests = client
        .subscribe(request_subject(&topic))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let requester = NatsBroker::connect(server.url())
        .await
        .expect("connect")
        .into_broker();

    // A plain request: no header, its fields in the last token of its
    // reply subject. A request with a header of its own: one header with
    // the fields, the reply subject `<inbox>.<request id>`.
    let plain = courier_core::Message::new("q");
    let tagged = courier_core::Message::new("q")
        .with_header("tenant", "acme")
        .expect("header");
    for (message, in_subject) in [(plain, true), (tagged, false)] {
        let id = message.id().to_string();
        let asking = tokio::spawn({
            let (requester, topic) = (requester.clone(), topic.clone());
            async move {
                requester
                    .request(&topic, message, Duration::from_secs(20))
                    .await
            }
        });
        let request = tokio::time::timeout(Duration::from_secs(15), requests.next())
            .await
            .expect("a request within 15 s")
            .expect("subscription open");
        let now_ms = now_ms();
        let reply = request.reply.clone().expect("a reply subject");
        let tokens: Vec<&str> = reply.split('.').collect();
        let fields = if in_subject {
            assert!(request.headers.is_none(), "{:?}", request.headers);
            assert_eq!(tokens.len(), 4, "<inbox>.<request id>.<fields>: {reply}");
            tokens[3]
                .strip_prefix("courier:")
                .expect("the fields token")
                .to_owned()
        } else {
            let headers = request.headers.clone().expect("headers");
            let mut names: Vec<String> = headers.iter().map(|(n, _)| n.to_string()).collect();
            names.sort();
            assert_eq!(names, ["courier-fields", "tenant"], "one header of fields");
            assert_eq!(tokens.len(), 3, "<inbox>.<request id>: {reply}");
            headers.get("courier-fields").expect("fields").to_string()
        };
        assert!(fields.contains(&format!("id={id};")), "{fields}");
        let deadline: u64 = fields
            .split(';')
            .find_map(|f| f.strip_prefix("dl="))
            .expect("the deadline travels as a field")
            .parse()
            .expect("milliseconds");
        assert!(
            (now_ms + 10_000..=now_ms + 20_000).contains(&deadline),
            "deadline {deadline} about 20 s after {now_ms}"
        );
        // A plain responder answers to the reply subject as it is.
        client
            .publish(reply, "a".into())
            .await
            .expect("publish the reply");
        let answer = asking.await.expect("task").expect("the reply");
        assert_eq!(answer.payload().as_ref(), b"a");
    }
}

#[tokio::test]
async fn a_courier_reply_carries_its_fields_in_its_own_reply_subject_when_its_request_asks() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let broker = NatsBroker::connect(server.url()).await.expect("connect");
    let topic = courier_testkit::fixtures::unique_name("rr-reply-wire");
    let running = responder(&broker, &topic).await;
    let client = async_nats::connect(server.url()).await.expect("connect");
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(format!("{inbox}.>"))
        .await
        .expect("subscribe");
    let deadline_ms = now_ms() + 60_000;

    // Requests in courier's subject form, one asking for the reply's
    // fields in its reply subject (`rf=1`, as courier's requesters write
    // it) and one not (as a requester built before that does).
    for (n, asks) in [(1_u32, true), (2, false)] {
        let id = courier_core::MessageId::new().to_string();
        let ask = if asks { "rf=1;" } else { "" };
        client
            .publish_with_reply(
                request_subject(&topic),
                format!("{inbox}.{n}.courier:id={id};ct=application/json;dl={deadline_ms};{ask}"),
                serde_json::to_vec(&Order { id: n }).expect("json").into(),
            )
            .await
            .expect("publish");
        let reply = tokio::time::timeout(Duration::from_secs(15), replies.next())
            .await
            .expect("a reply within 15 s")
            .expect("subscription open");
        let order: Order = serde_json::from_slice(&reply.payload).expect("decode");
        assert_eq!(order, Order { id: n + 1000 });
        let fields = if asks {
            assert!(reply.headers.is_none(), "{:?}", reply.headers);
            let subject = reply
                .reply
                .clone()
                .expect("the fields as its reply subject");
            assert_eq!(subject.split('.').count(), 1, "one token: {subject}");
            subject
                .strip_prefix("courier:")
                .expect("courier's fields")
                .to_owned()
        } else {
            assert_eq!(reply.reply, None);
            let headers = reply.headers.clone().expect("headers");
            headers.get("courier-fields").expect("fields").to_string()
        };
        assert!(fields.contains("ct=application/json;"), "{fields}");
        assert!(fields.contains(&format!("cause={id};")), "{fields}");
        assert!(fields.contains(&format!("corr={id};")), "{fields}");
    }

    // Courier on both sides: the requester reads the reply's fields from
    // its reply subject.
    let requester = NatsBroker::connect(server.url())
        .await
        .expect("connect")
        .into_broker();
    let request = courier_core::Message::from_json(&Order { id: 7 }).expect("json");
    let request_id = request.id().to_string();
    let reply = requester
        .request(&topic, request, Duration::from_secs(15))
        .await
        .expect("answered");
    assert_eq!(reply.json::<Order>().expect("decode"), Order { id: 1007 });
    assert_eq!(reply.causation_id(), Some(request_id.as_str()));
    assert_eq!(reply.correlation_id(), Some(request_id.as_str()));
    assert_eq!(reply.content_type(), Some("application/json"));
    running.shutdown().await.expect("shutdown");
}
