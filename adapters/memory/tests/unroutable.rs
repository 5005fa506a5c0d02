//! A topic without groups keeps its last `retention` messages for later
//! `Earliest` groups; with retention 0 a publish to it is unroutable
//! unless `unroutable=drop`.

use courier_core::prelude::*;
use courier_core::request::RequestError;
use courier_core::{BrokerErrorKind, Message, StartPosition, Subscription};
use courier_memory::MemoryBroker;
use futures::FutureExt;

#[tokio::test]
async fn without_retention_a_publish_nobody_receives_is_unroutable() {
    let broker = MemoryBroker::connect("memory://?retention=0").unwrap();
    let err = broker
        .publish("orders", Message::new("lost"))
        .await
        .unwrap_err();
    assert_eq!(err.broker_kind(), Some(BrokerErrorKind::Unroutable));
    assert_eq!(courier_core::unroutable::topic(&err), Some("orders"));
    assert!(!err.is_retryable());
    let batch = vec![Message::new("a"), Message::new("b")];
    let err = broker.publish_batch("orders", batch).await.unwrap_err();
    assert_eq!(err.broker_kind(), Some(BrokerErrorKind::Unroutable));

    // Once a group exists it receives what comes after, nothing before.
    let group = Subscription::new("orders", "billing").start_from(StartPosition::Earliest);
    let mut stream = broker.subscribe(group).await.unwrap();
    broker
        .publish("orders", Message::new("kept"))
        .await
        .unwrap();
    let delivery = stream.next().await.unwrap().unwrap();
    assert_eq!(delivery.message().payload().as_ref(), b"kept");
    delivery.ack().await.unwrap();
    assert!(stream.next().now_or_never().is_none(), "nothing else");
}

#[tokio::test]
async fn without_retention_drop_makes_it_fire_and_forget() {
    let broker = MemoryBroker::connect("memory://?retention=0&unroutable=drop").unwrap();
    broker
        .publish("orders", Message::new("gone"))
        .await
        .unwrap();
    let group = Subscription::new("orders", "billing").start_from(StartPosition::Earliest);
    let mut stream = broker.subscribe(group).await.unwrap();
    assert!(
        stream.next().now_or_never().is_none(),
        "the message is gone"
    );
}

#[tokio::test]
async fn with_retention_a_later_earliest_group_receives_it_once() {
    let broker = MemoryBroker::connect("memory://?retention=5").unwrap();
    broker
        .publish("orders", Message::new("kept"))
        .await
        .unwrap();
    let group = Subscription::new("orders", "billing").start_from(StartPosition::Earliest);
    let mut stream = broker.subscribe(group).await.unwrap();
    let delivery = stream.next().await.unwrap().unwrap();
    assert_eq!(delivery.message().payload().as_ref(), b"kept");
    delivery.ack().await.unwrap();
    assert!(stream.next().now_or_never().is_none(), "exactly once");
}

#[tokio::test]
async fn a_request_nobody_receives_is_still_no_responders() {
    for url in [
        "memory://?retention=0",
        "memory://?retention=0&unroutable=drop",
    ] {
        let broker = MemoryBroker::connect(url).unwrap().into_broker();
        let err = broker
            .request(
                "orders",
                Message::new("ask"),
                std::time::Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::NoResponders { .. }),
            "{url}: {err:?}"
        );
    }
}
