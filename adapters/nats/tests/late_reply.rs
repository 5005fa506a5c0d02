//! A reply that arrives when no request of its connection waits at all is
//! still dropped and counted: the inbox hands replies over as they arrive,
//! not only while some request waits.

use std::time::Duration;

use courier_core::Message;
use courier_core::request::RequestError;
use courier_nats::{NatsBroker, request_subject};
use futures::StreamExt;

#[tokio::test]
async fn a_reply_after_the_last_request_gave_up_is_counted_late() {
    let server = courier_testkit::fixtures::nats()
        .await
        .expect("nats fixture");
    let broker = NatsBroker::connect(server.url())
        .await
        .expect("connect")
        .into_broker();
    let topic = courier_testkit::fixtures::unique_name("rr-late");

    // A plain responder that holds every request: it answers only below.
    let plain = async_nats::connect(server.url()).await.expect("connect");
    let mut requests = plain
        .queue_subscribe(request_subject(&topic), "answers".to_owned())
        .await
        .expect("subscribe");
    plain.flush().await.expect("flush");

    // The subscription may reach the server after the first request: that
    // one is refused (no responders) and sent again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match broker
            .request(&topic, Message::new("q"), Duration::from_millis(300))
            .await
        {
            Err(RequestError::Timeout { .. }) => break,
            Err(RequestError::NoResponders { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    let request = tokio::time::timeout(Duration::from_secs(10), requests.next())
        .await
        .expect("the request reached the plain responder")
        .expect("subscribed");
    let reply_to = request.reply.expect("a reply subject");
    assert_eq!(broker.late_replies(), 0);

    // Nobody waits any more: the reply is dropped and counted.
    plain
        .publish(reply_to, "too late".into())
        .await
        .expect("reply");
    plain.flush().await.expect("flush");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.late_replies() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(broker.late_replies(), 1);
    broker.close().await.expect("close");
}
