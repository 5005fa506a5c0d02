//! Bad input gets a clear, typed error and loses nothing.

use courier::headers::{HeaderError, MAX_TOTAL_LEN};
use courier::{Error, Message, Subscription};
use futures::StreamExt;

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Order {
    id: u64,
}

#[tokio::test]
async fn invalid_topic_names_are_typed_errors_naming_the_problem() {
    let broker = courier::connect("memory://").await.unwrap();
    let err = broker
        .publish("orders placed", Message::new("x"))
        .await
        .unwrap_err();
    match &err {
        Error::InvalidName(invalid) => assert_eq!(invalid.name, "orders placed"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "invalid topic name \"orders placed\": it contains ' '; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"
    );
    assert!(!err.is_retryable());
}

#[test]
fn oversized_headers_are_refused_and_the_message_keeps_the_others() {
    let message = Message::new("x").with_header("small", "kept").unwrap();
    let err = message
        .clone()
        .with_header("huge", "x".repeat(MAX_TOTAL_LEN))
        .unwrap_err();
    assert!(
        matches!(
            err,
            HeaderError::TooLarge {
                limit: MAX_TOTAL_LEN,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(message.header("small"), Some("kept"));
}

#[test]
fn non_utf8_header_values_from_a_broker_are_typed_errors() {
    let err = courier::adapter::wire::decode(
        [("x-legacy", &b"caf\xe9"[..])],
        courier::Bytes::new(),
        None,
        courier::MessageId::new,
    )
    .unwrap_err();
    assert_eq!(err, HeaderError::NotUtf8("x-legacy".into()));
}

#[tokio::test]
async fn json_that_does_not_match_the_type_is_a_decode_error_and_the_message_stays() {
    let broker = courier::connect("memory://").await.unwrap();
    let sub = Subscription::new("orders", "billing");
    let mut stream = broker.subscribe(sub).await.unwrap();
    broker
        .publish("orders", Message::new(r#"{"id":"seven"}"#))
        .await
        .unwrap();
    let delivery = stream.next().await.unwrap().unwrap();
    let err = delivery.message().json::<Order>().unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("Order"), "{err}");
    assert!(!err.is_retryable());
    // Nothing is lost: dead-lettering keeps the payload with the reason.
    let dlq = Subscription::new("orders.dlq", "ops");
    broker.provision(&dlq).await.unwrap();
    delivery
        .nack(courier::Nack::dead_letter(courier::error::chain(&err)))
        .await
        .unwrap();
    let mut dead = broker.subscribe(dlq).await.unwrap();
    let d = dead.next().await.unwrap().unwrap();
    assert_eq!(d.message().payload().as_ref(), br#"{"id":"seven"}"#);
    let reason = d.message().header(courier::delivery::DLQ_REASON).unwrap();
    assert!(reason.contains("cannot decode message"), "{reason}");
    assert!(
        reason.contains("invalid type: string \"seven\", expected u64"),
        "{reason}"
    );
    d.ack().await.unwrap();
}
