//! How a [`Message`] travels as broker headers, for adapters.
//!
//! Brokers without native fields for courier's message attributes (Kafka
//! record headers, NATS headers) carry them as reserved headers next to the
//! user's: [`ID`], [`KEY`], [`CONTENT_TYPE`], [`TIMESTAMP`]. Adapters whose
//! broker has a native field for one (the Kafka record key, AMQP properties)
//! may use it instead and pass it to [`decode`].
//!
//! What a receiving adapter trusts: of courier's messages every header, of
//! a foreign producer's no reserved (`courier-`) header, and of none a
//! header courier cannot carry; see [`origin`](super::origin), which
//! adapters apply before [`decode`].

use bytes::Bytes;

use crate::headers::{HeaderError, Headers};
use crate::message::{Message, MessageId};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Header carrying the message id.
pub const ID: &str = "courier-id";
/// Header carrying the ordering key.
pub const KEY: &str = "courier-key";
/// Header carrying the content type.
pub const CONTENT_TYPE: &str = "courier-content-type";
/// Header carrying the timestamp, milliseconds since the Unix epoch.
pub const TIMESTAMP: &str = "courier-timestamp-ms";

/// Which message attributes the broker carries natively, so [`encode`] leaves
/// them out of the headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Native {
    /// The broker carries the key (Kafka record key).
    pub key: bool,
}

/// Calls `put(name, value)` for every header the message travels with: the
/// user's and courier's own.
///
/// Allocates nothing itself: the id and the timestamp are written into
/// buffers on the stack.
pub fn encode(message: &Message, native: Native, mut put: impl FnMut(&str, &str)) {
    let mut id = [0; uuid::fmt::Hyphenated::LENGTH];
    put(ID, message.id().as_text(&mut id));
    if let Some(key) = message.key().filter(|_| !native.key) {
        put(KEY, key);
    }
    if let Some(ct) = message.content_type() {
        put(CONTENT_TYPE, ct);
    }
    put(
        TIMESTAMP,
        decimal(message.timestamp_millis(), &mut Digits::default()),
    );
    for (name, value) in message.headers().iter() {
        put(name, value);
    }
}

/// Room for one number written by [`decimal`], on the stack.
#[derive(Default, Clone, Copy)]
pub struct Digits(itoa::Buffer);

impl std::fmt::Debug for Digits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digits")
    }
}

/// `n` in decimal, written into `digits`: a number for a header without a
/// `String` of its own, two digits at a time and without checking the
/// text again (about a quarter of a digit-by-digit loop's cost; every
/// publish writes its timestamp).
pub fn decimal(n: u64, digits: &mut Digits) -> &str {
    digits.0.format(n)
}

/// Rebuilds a message from the broker's headers and payload.
///
/// `native_key` is the broker's own key field if it has one. A message from a
/// producer that did not set [`ID`] gets `fallback_id()`; one without
/// [`TIMESTAMP`] keeps the time of decoding.
///
/// Allocates only what the message keeps: its key, a content type other
/// than the common ones, an id that is not a UUID, user headers.
///
/// # Errors
///
/// [`HeaderError::NotUtf8`] when a header value is not UTF-8, and the other
/// [`HeaderError`]s when headers break courier's limits.
pub fn decode<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    payload: Bytes,
    native_key: Option<&str>,
    fallback_id: impl FnOnce() -> MessageId,
) -> Result<Message, HeaderError> {
    let mut id = None;
    let mut key = native_key;
    let mut content_type = None;
    let mut timestamp = None;
    let mut user = Headers::new();
    for (name, raw) in headers {
        let value = std::str::from_utf8(raw).map_err(|_| HeaderError::NotUtf8(name.to_owned()))?;
        match name {
            ID => id = Some(MessageId::parse(value)?),
            KEY => key = Some(value),
            CONTENT_TYPE => content_type = Some(value),
            TIMESTAMP => {
                if let Ok(ms) = value.parse::<u64>() {
                    timestamp = Some(UNIX_EPOCH + Duration::from_millis(ms));
                }
            }
            _ => user.insert_reserved(name, value)?,
        }
    }
    // The id and the time the message travelled with: no id drawn and no
    // clock read unless it lacks them.
    let id = id.unwrap_or_else(fallback_id);
    let timestamp = timestamp.unwrap_or_else(SystemTime::now);
    let mut message = Message::received(id, timestamp, payload);
    *message.headers_mut() = user;
    if let Some(content_type) = content_type {
        message.set_content_type_text(content_type);
    }
    if let Some(key) = key {
        message.set_key_text(key);
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_writes_every_u64_as_to_string_does() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            1_790_000_000_123,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(decimal(n, &mut Digits::default()), n.to_string());
        }
    }

    #[test]
    fn every_attribute_round_trips() {
        let original = Message::new("payload")
            .with_key("k-ü")
            .with_content_type("text/plain")
            .with_header("empty", "")
            .unwrap()
            .with_header("unicode", "✓ ünïcode")
            .unwrap()
            .with_correlation_id("corr")
            .unwrap()
            .with_causation_id("cause")
            .unwrap();
        let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
        encode(&original, Native::default(), |n, v| {
            pairs.push((n.to_owned(), v.as_bytes().to_vec()))
        });
        let decoded = decode(
            pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
            original.payload().clone(),
            None,
            MessageId::new,
        )
        .unwrap();
        assert_eq!(decoded, original);
    }

    #[test]
    fn native_key_is_not_duplicated_in_headers() {
        let original = Message::new("p").with_key("k");
        let mut names = Vec::new();
        encode(&original, Native { key: true }, |n, _| {
            names.push(n.to_owned())
        });
        assert!(!names.iter().any(|n| n == KEY));
    }

    #[test]
    fn non_utf8_header_values_are_a_typed_error() {
        let err = decode(
            [("x", &[0xff, 0xfe][..])],
            Bytes::new(),
            None,
            MessageId::new,
        )
        .unwrap_err();
        assert_eq!(err, HeaderError::NotUtf8("x".into()));
    }

    #[test]
    fn the_id_and_timestamp_travelled_with_are_kept() {
        let id = "0190b6b4-0000-7000-8000-000000000000";
        let headers: [(&str, &[u8]); 2] = [(ID, id.as_bytes()), (TIMESTAMP, b"1234")];
        let msg = decode(headers, Bytes::new(), None, || unreachable!("id given")).unwrap();
        assert_eq!(msg.id().to_string(), id);
        assert_eq!(msg.timestamp_millis(), 1234);
        let before = SystemTime::now() - Duration::from_millis(1);
        let untimed = decode([(ID, id.as_bytes())], Bytes::new(), None, MessageId::new).unwrap();
        assert!(
            untimed.timestamp() >= before,
            "without a timestamp: decoding time"
        );
    }

    #[test]
    fn foreign_messages_get_the_fallback_id() {
        let id = MessageId::parse("topic-0-17").unwrap();
        let msg = decode([], Bytes::from_static(b"x"), None, || id.clone()).unwrap();
        assert_eq!(msg.id(), &id);
    }
}
