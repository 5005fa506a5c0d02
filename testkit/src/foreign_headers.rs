//! What the adapters' foreign-producer tests share: the headers a raw
//! client forges, and what courier must make of them and of its own
//! message ([`courier_core::adapter::origin`]).

use courier_core::Message;

/// Headers a foreign producer sets: two in courier's reserved space (not
/// to be trusted) and a plain one (kept).
pub const FORGED_HEADERS: [(&str, &str); 3] = [
    ("courier-correlation-id", "forged"),
    ("courier-whatever", "x"),
    ("plain", "kept"),
];

/// A courier message with reserved fields of its own (correlation and
/// causation ids) and a plain header.
///
/// # Panics
///
/// Never: the headers are valid.
pub fn courier_message() -> Message {
    Message::new("courier")
        .with_correlation_id("flow-1")
        .expect("valid")
        .with_causation_id("cause-1")
        .expect("valid")
        .with_header("plain", "kept")
        .expect("valid")
}

/// Asserts that a received foreign message kept the plain header of
/// [`FORGED_HEADERS`] and none of the reserved ones.
///
/// # Panics
///
/// When a reserved header was trusted or the plain one lost.
pub fn assert_reserved_not_trusted(received: &Message) {
    assert_eq!(received.correlation_id(), None, "a forged correlation id");
    assert_eq!(received.header("courier-correlation-id"), None);
    assert_eq!(received.header("courier-whatever"), None);
    assert_eq!(received.header("plain"), Some("kept"));
}

/// Asserts that [`courier_message`] `sent` arrived with its own fields.
///
/// # Panics
///
/// When a field differs.
pub fn assert_courier_fields_kept(received: &Message, sent: &Message) {
    assert_eq!(received.id(), sent.id());
    assert_eq!(received.correlation_id(), Some("flow-1"));
    assert_eq!(received.causation_id(), Some("cause-1"));
    assert_eq!(received.header("plain"), Some("kept"));
    assert_eq!(received.timestamp_millis(), sent.timestamp_millis());
}
