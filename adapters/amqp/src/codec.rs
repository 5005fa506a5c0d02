//! A [`Message`] as AMQP properties, headers and body, and back.
//!
//! | courier            | AMQP                                                              |
//! |--------------------|-------------------------------------------------------------------|
//! | id                 | `message_id` property (`courier-id` header if over 255 bytes)     |
//! | key                | `courier-key` header                                              |
//! | content type       | `content_type` property (`courier-content-type` if over 255 bytes) |
//! | timestamp          | `timestamp` property in seconds, plus the milliseconds: from the id when it is a UUID v7 of that very millisecond (as every `Message::new` is), else in the `courier-timestamp-ms` header |
//! | correlation id     | `correlation_id` property (`courier-correlation-id` header if over 255 bytes) |
//! | reply address (requests) | `reply_to` property (`courier-reply-to` header if over 255 bytes); direct reply-to's address, which the broker puts in the property, wins |
//! | causation id, user headers | headers, as long strings                                  |
//! | payload            | body, persistent (`delivery_mode` 2)                              |
//! | (origin)           | `app_id` property `courier`: marks courier's messages             |
//!
//! Decoding is lenient so that messages of other producers are delivered:
//! the properties fill in what the headers lack (a message without any id
//! gets one derived from its content, see `content_id`), non-string header values
//! become text, nested tables and arrays and names courier cannot carry are
//! left out with a debug line, a foreign message's (one whose `app_id`
//! property is not `courier`) `courier-` headers are not trusted and left
//! out ([`courier_core::adapter::origin`]), and the headers RabbitMQ adds while dead-lettering or counting
//! deliveries (`x-death`, `x-first-death-*`, `x-last-death-*`,
//! `x-delivery-count`) are not shown as message headers.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use courier_core::adapter::origin::{self, Origin};
use courier_core::adapter::{
    self,
    wire::{CONTENT_TYPE, ID, KEY, TIMESTAMP},
};
use courier_core::message::CORRELATION_ID;
use courier_core::request::headers::REPLY_TO;
use courier_core::{BrokerErrorKind, Error, Headers, Message, MessageId, Result};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use sha2::{Digest, Sha256};

use crate::error::{AmqpError, broker};

/// Header with the number of deliveries a message had before it went
/// through a retry queue ([`courier_core::Nack::RequeueAfter`]).
pub(crate) const PRIOR_DELIVERIES: &str = "courier-prior-deliveries";

/// The header RabbitMQ's quorum queues count redeliveries in.
const BROKER_DELIVERY_COUNT: &str = "x-delivery-count";

/// Headers RabbitMQ adds on its own, not part of the published message.
const BROKER_HEADERS: &[&str] = &[
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    BROKER_DELIVERY_COUNT,
];

/// The `app_id` property courier sets on every message it publishes: what
/// tells its messages from a foreign producer's.
pub(crate) const COURIER_APP_ID: &str = "courier";

/// AMQP's persistent delivery mode.
const PERSISTENT: u8 = 2;

/// The properties a message travels with. `prior_deliveries` is set on
/// copies sent through a retry queue.
///
/// # Errors
///
/// A header name longer than 255 bytes.
pub(crate) fn encode(message: &Message, prior_deliveries: Option<u32>) -> Result<BasicProperties> {
    let mut headers = FieldTable::default();
    let mut put = |name: &str, value: &str| -> Result<()> {
        let name = ShortString::try_new(name).map_err(|_| {
            broker(
                "publish",
                BrokerErrorKind::Rejected,
                AmqpError::HeaderNameTooLong(name.len()),
            )
        })?;
        headers.insert(name, AMQPValue::LongString(LongString::from(value)));
        Ok(())
    };
    // The correlation id and the reply address travel as the properties
    // made for them when they fit one (decoding restores them from there):
    // every entry of the header table costs the broker and each receiving
    // client a field to parse.
    let correlation = message
        .correlation_id()
        .and_then(|c| ShortString::try_new(c).ok());
    let reply_to = message
        .header(REPLY_TO)
        .and_then(|r| ShortString::try_new(r).ok());
    for (name, value) in message.headers().iter() {
        if (name == CORRELATION_ID && correlation.is_some())
            || (name == REPLY_TO && reply_to.is_some())
        {
            continue;
        }
        put(name, value)?;
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_app_id(ShortString::from(COURIER_APP_ID));
    let mut buf = [0; 36];
    let id = message.id().as_text(&mut buf);
    match ShortString::try_new(id) {
        Ok(id) => properties = properties.with_message_id(id),
        Err(_) => put(ID, id)?,
    }
    if let Some(key) = message.key() {
        put(KEY, key)?;
    }
    if let Some(content_type) = message.content_type() {
        match ShortString::try_new(content_type) {
            Ok(ct) => properties = properties.with_content_type(ct),
            Err(_) => put(CONTENT_TYPE, content_type)?,
        }
    }
    let millis = message.timestamp_millis();
    if message.id().v7_millis() != Some(millis) {
        put(TIMESTAMP, &millis.to_string())?;
    }
    properties = properties.with_timestamp(millis / 1000);
    if let Some(correlation) = correlation {
        properties = properties.with_correlation_id(correlation);
    }
    if let Some(reply_to) = reply_to {
        properties = properties.with_reply_to(reply_to);
    }
    if let Some(prior) = prior_deliveries {
        put(PRIOR_DELIVERIES, &prior.to_string())?;
    }
    if !headers.inner().is_empty() {
        properties = properties.with_headers(headers);
    }
    Ok(properties)
}

/// A received message and what the broker said about its deliveries.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) message: Message,
    /// Deliveries before the message last went through a retry queue.
    pub(crate) prior_deliveries: u32,
    /// The quorum queue's count of earlier deliveries from this queue.
    pub(crate) broker_redeliveries: u32,
}

impl Decoded {
    /// Deliveries so far, this one included.
    pub(crate) fn delivery_count(&self) -> u32 {
        self.prior_deliveries
            .saturating_add(self.broker_redeliveries)
            .saturating_add(1)
    }
}

/// Rebuilds the message from a delivery's properties and body.
pub(crate) fn decode(properties: &BasicProperties, body: Vec<u8>) -> Decoded {
    let payload = Bytes::from(body);
    let mut headers = Headers::new();
    let mut id = None;
    let mut key = None;
    let mut content_type = None;
    let mut millis = None;
    let mut prior_deliveries = 0;
    let mut broker_redeliveries = 0;
    let origin = origin_of(properties);
    if let Some(table) = properties.headers() {
        for (name, value) in table.inner() {
            let name = name.as_str();
            if name == BROKER_DELIVERY_COUNT {
                broker_redeliveries = as_u32(value).unwrap_or(0);
                continue;
            }
            if !set_by_producer(name) {
                if name == PRIOR_DELIVERIES && origin == Origin::Courier {
                    prior_deliveries = as_text(value).and_then(|t| t.parse().ok()).unwrap_or(0);
                }
                continue;
            }
            if origin == Origin::Foreign && origin::is_reserved(name) {
                origin::untrusted(name);
                continue;
            }
            let Some(text) = as_text(value) else {
                origin::left_out(name, "a nested table, array or other value without text");
                continue;
            };
            match name {
                ID => id = MessageId::parse(&text).ok(),
                KEY => key = Some(text),
                CONTENT_TYPE => content_type = Some(text),
                TIMESTAMP => millis = text.parse::<u64>().ok(),
                // A name or value courier cannot carry is left out rather
                // than failing the whole delivery.
                _ => {
                    if let Err(e) = adapter::restore_header(&mut headers, name, text) {
                        origin::left_out(name, &e.to_string());
                    }
                }
            }
        }
    }
    if headers.get(CORRELATION_ID).is_none()
        && let Some(correlation) = properties.correlation_id()
    {
        let _ = adapter::restore_header(
            &mut headers,
            CORRELATION_ID,
            clean(correlation.as_str().into()),
        );
    }
    // Direct reply-to: the broker put the requester's channel into the
    // property; it replaces the placeholder the header carried.
    if let Some(reply_to) = properties.reply_to() {
        let _ = adapter::restore_header(&mut headers, REPLY_TO, reply_to.as_str());
    }
    let id = id
        .or_else(|| {
            properties
                .message_id()
                .as_ref()
                .and_then(|id| MessageId::parse(id.as_str()).ok())
        })
        // A foreign message without an id gets one derived from its
        // content, the same on every delivery.
        .unwrap_or_else(|| content_id(&payload, properties));
    let millis = millis.or_else(|| {
        let seconds = (*properties.timestamp())?;
        // The id of the same second has the milliseconds.
        Some(
            id.v7_millis()
                .filter(|ms| ms / 1000 == seconds)
                .unwrap_or(seconds.saturating_mul(1000)),
        )
    });
    // Built from what it travelled with: no id drawn, no clock read unless
    // it carries no time.
    let timestamp =
        millis.map_or_else(SystemTime::now, |ms| UNIX_EPOCH + Duration::from_millis(ms));
    let mut message = adapter::received(id, timestamp, payload);
    *adapter::headers_mut(&mut message) = headers;
    if let Some(key) = key {
        adapter::set_key(&mut message, &key);
    }
    let content_type = content_type.or_else(|| {
        let property = properties.content_type().as_ref()?;
        Some(Cow::Borrowed(property.as_str()))
    });
    if let Some(content_type) = content_type {
        adapter::set_content_type(&mut message, &content_type);
    }
    Decoded {
        message,
        prior_deliveries,
        broker_redeliveries,
    }
}

/// Courier's when the `app_id` property is [`COURIER_APP_ID`], which courier
/// sets on every message: the generic properties it also always writes
/// (`message_id`, `timestamp`) are common among other producers too.
fn origin_of(properties: &BasicProperties) -> Origin {
    let marked = properties
        .app_id()
        .as_ref()
        .is_some_and(|app| app.as_str() == COURIER_APP_ID);
    Origin::from_fields(marked, marked)
}

/// Whether a header was set by the message's producer: not one the broker
/// adds, nor courier's count of deliveries before a retry queue.
fn set_by_producer(name: &str) -> bool {
    name != BROKER_DELIVERY_COUNT && name != PRIOR_DELIVERIES && !BROKER_HEADERS.contains(&name)
}

/// The id of a message whose producer set none: `amqp-` and 32 hex digits
/// of a SHA-256 of its body, the headers its producer set and its
/// properties. Stable across redeliveries, so deduplication by id works for
/// it; byte-identical messages (same body, headers and properties) share
/// it. Computed only for such a message: hashing every body would cost a
/// large message more than the rest of its decoding.
fn content_id(body: &[u8], properties: &BasicProperties) -> MessageId {
    let mut content = Sha256::new();
    content.update(body);
    if let Some(table) = properties.headers() {
        for (name, value) in table.inner() {
            if set_by_producer(name.as_str()) {
                content.update(name.as_str().as_bytes());
                content.update(format!("{value:?}").as_bytes());
            }
        }
    }
    for property in [
        properties.correlation_id().as_ref().map(|s| s.as_str()),
        properties.content_type().as_ref().map(|s| s.as_str()),
        properties.kind().as_ref().map(|s| s.as_str()),
        properties.app_id().as_ref().map(|s| s.as_str()),
        properties.user_id().as_ref().map(|s| s.as_str()),
    ] {
        content.update(property.unwrap_or("").as_bytes());
        content.update([0]);
    }
    content.update(properties.timestamp().unwrap_or(0).to_be_bytes());
    let digest = content.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    MessageId::parse(&format!("amqp-{hex}")).expect("a valid id")
}

/// Whether `message` can be encoded: a payload within `limit` and header
/// names AMQP can carry.
///
/// # Errors
///
/// [`Error::PayloadTooLarge`], or a header name longer than 255 bytes.
pub(crate) fn check(message: &Message, limit: usize) -> Result<()> {
    let size = message.payload().len();
    if size > limit {
        return Err(Error::PayloadTooLarge { size, limit });
    }
    if let Some((name, _)) = message.headers().iter().find(|(name, _)| name.len() > 255) {
        return Err(broker(
            "publish",
            BrokerErrorKind::Rejected,
            AmqpError::HeaderNameTooLong(name.len()),
        ));
    }
    Ok(())
}

/// A scalar header value as text; tables and arrays have none. Borrowed
/// from the delivery when it is a string courier can keep as it is (what
/// courier's own headers are), so reading one allocates nothing.
fn as_text(value: &AMQPValue) -> Option<Cow<'_, str>> {
    let text: Cow<'_, str> = match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()),
        AMQPValue::ShortString(s) => Cow::Borrowed(s.as_str()),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()),
        AMQPValue::Boolean(b) => b.to_string().into(),
        AMQPValue::ShortShortInt(n) => n.to_string().into(),
        AMQPValue::ShortShortUInt(n) => n.to_string().into(),
        AMQPValue::ShortInt(n) => n.to_string().into(),
        AMQPValue::ShortUInt(n) => n.to_string().into(),
        AMQPValue::LongInt(n) => n.to_string().into(),
        AMQPValue::LongUInt(n) => n.to_string().into(),
        AMQPValue::LongLongInt(n) => n.to_string().into(),
        AMQPValue::Float(n) => n.to_string().into(),
        AMQPValue::Double(n) => n.to_string().into(),
        AMQPValue::Timestamp(n) => n.to_string().into(),
        AMQPValue::Void => Cow::Borrowed(""),
        _ => return None,
    };
    Some(clean(text))
}

/// Header values are single lines.
fn clean(text: Cow<'_, str>) -> Cow<'_, str> {
    if adapter::has_line_break(&text) {
        text.replace(['\r', '\n'], " ").into()
    } else {
        text
    }
}

fn as_u32(value: &AMQPValue) -> Option<u32> {
    let n: i128 = match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        _ => return None,
    };
    u32::try_from(n.max(0)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn round_trip(message: &Message) -> Message {
        let properties = encode(message, None).unwrap();
        decode(&properties, message.payload().to_vec()).message
    }

    #[test]
    fn the_reply_address_travels_as_the_reply_to_property_which_wins() {
        use courier_core::request::headers::{self, REPLY_TO};
        let (_, request) = headers::prepare(
            Message::new("q"),
            crate::request::DIRECT_REPLY_TO,
            Duration::from_secs(1),
        );
        let properties = encode(&request, None).unwrap();
        assert_eq!(
            properties.reply_to().as_ref().map(|r| r.as_str()),
            Some(crate::request::DIRECT_REPLY_TO)
        );
        // The broker puts the requester's channel into the property.
        let routed = properties.with_reply_to("amq.rabbitmq.reply-to.g1h2".into());
        let decoded = decode(&routed, b"q".to_vec()).message;
        assert_eq!(decoded.header(REPLY_TO), Some("amq.rabbitmq.reply-to.g1h2"));
        assert_eq!(round_trip(&Message::new("plain")).header(REPLY_TO), None);
    }

    #[test]
    fn correlation_and_reply_address_leave_the_header_table_when_a_property_holds_them() {
        use courier_core::request::headers::{self, DEADLINE, REQUEST_ID};
        let names = |properties: &BasicProperties| -> Vec<String> {
            let mut names: Vec<String> = properties
                .headers()
                .as_ref()
                .map(|table| table.inner().keys().map(|k| k.to_string()).collect())
                .unwrap_or_default();
            names.sort();
            names
        };
        let (_, request) = headers::prepare(
            Message::new("q").with_correlation_id("flow-1").unwrap(),
            crate::request::DIRECT_REPLY_TO,
            Duration::from_secs(1),
        );
        let properties = encode(&request, None).unwrap();
        assert_eq!(names(&properties), [DEADLINE, REQUEST_ID]);
        assert_eq!(
            properties.correlation_id().as_ref().map(|c| c.as_str()),
            Some("flow-1")
        );
        assert_eq!(round_trip(&request), request);
        // Too long for a property: the header carries it.
        let long = Message::new("x")
            .with_correlation_id("c".repeat(256))
            .unwrap();
        let properties = encode(&long, None).unwrap();
        assert_eq!(names(&properties), [CORRELATION_ID]);
        assert!(properties.correlation_id().is_none());
        assert_eq!(round_trip(&long), long);
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
            .with_header("x-request-id", "r1")
            .unwrap()
            .with_correlation_id("corr")
            .unwrap()
            .with_causation_id("cause")
            .unwrap()
            .with_timestamp(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        assert_eq!(round_trip(&original), original);
    }

    #[test]
    fn long_ids_and_content_types_travel_as_headers() {
        let id = MessageId::parse(&"i".repeat(256)).unwrap();
        let original = Message::new("")
            .with_id(id)
            .with_content_type("t".repeat(300));
        let properties = encode(&original, None).unwrap();
        assert!(properties.message_id().is_none());
        assert_eq!(round_trip(&original), original);
    }

    #[test]
    fn a_foreign_message_without_an_id_gets_the_same_id_on_every_delivery() {
        let properties = |deliveries: i64, body_header: &str| {
            let mut headers = FieldTable::default();
            headers.insert("tenant".into(), AMQPValue::LongString(body_header.into()));
            headers.insert(
                "x-delivery-count".into(),
                AMQPValue::LongLongInt(deliveries),
            );
            BasicProperties::default()
                .with_timestamp(1_700_000_000)
                .with_headers(headers)
        };
        let first = decode(&properties(0, "a"), b"{}".to_vec()).message;
        let again = decode(&properties(3, "a"), b"{}".to_vec()).message;
        assert!(
            first.id().to_string().starts_with("amqp-"),
            "{}",
            first.id()
        );
        assert_eq!(first.id(), again.id(), "the broker's count is not content");
        let other_header = decode(&properties(0, "b"), b"{}".to_vec()).message;
        let other_body = decode(&properties(0, "a"), b"[]".to_vec()).message;
        assert_ne!(first.id(), other_header.id());
        assert_ne!(first.id(), other_body.id());
    }

    #[test]
    fn a_content_id_stays_what_earlier_versions_derived() {
        // Deduplication by id across an upgrade needs the same id for the
        // same foreign message.
        let mut headers = FieldTable::default();
        headers.insert("tenant".into(), AMQPValue::LongString("a".into()));
        headers.insert("n".into(), AMQPValue::LongLongInt(-3));
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(4));
        let properties = BasicProperties::default()
            .with_timestamp(1_700_000_000)
            .with_correlation_id("c".into())
            .with_headers(headers);
        let message = decode(&properties, b"{\"a\":1}".to_vec()).message;
        assert_eq!(
            message.id().to_string(),
            "amqp-b25bbaf838a40ad83d6b407228013f3f"
        );
    }

    #[test]
    fn properties_of_other_producers_fill_in() {
        let mut headers = FieldTable::default();
        headers.insert("n".into(), AMQPValue::LongLongInt(-3));
        headers.insert("flag".into(), AMQPValue::Boolean(true));
        headers.insert(
            "nested".into(),
            AMQPValue::FieldTable(FieldTable::default()),
        );
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        headers.insert(
            "x-first-death-queue".into(),
            AMQPValue::LongString("q".into()),
        );
        let properties = BasicProperties::default()
            .with_message_id("order-17".into())
            .with_content_type("application/json".into())
            .with_timestamp(1_700_000_000)
            .with_correlation_id("c-1".into())
            .with_headers(headers);
        let decoded = decode(&properties, b"{}".to_vec());
        let m = &decoded.message;
        assert_eq!(m.id().to_string(), "order-17");
        assert_eq!(m.content_type(), Some("application/json"));
        assert_eq!(
            m.timestamp(),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        assert_eq!(m.correlation_id(), Some("c-1"));
        assert_eq!(m.header("n"), Some("-3"));
        assert_eq!(m.header("flag"), Some("true"));
        assert_eq!(m.header("nested"), None);
        assert_eq!(m.header("x-first-death-queue"), None);
        assert_eq!(decoded.delivery_count(), 3);
    }

    #[test]
    fn retry_copies_carry_their_delivery_count() {
        let original = Message::new("x").with_timestamp(SystemTime::now());
        let properties = encode(&original, Some(4)).unwrap();
        let decoded = decode(&properties, b"x".to_vec());
        assert_eq!(decoded.message, original);
        assert_eq!(decoded.delivery_count(), 5);
    }

    #[test]
    fn overlong_header_names_are_refused() {
        let message = Message::new("").with_header("n".repeat(256), "v").unwrap();
        assert!(!encode(&message, None).unwrap_err().is_retryable());
        assert!(!check(&message, 10).unwrap_err().is_retryable());
        assert!(matches!(
            check(&Message::new("12345678901"), 10),
            Err(Error::PayloadTooLarge {
                size: 11,
                limit: 10
            })
        ));
    }

    #[test]
    fn new_messages_need_no_timestamp_header() {
        let fresh = Message::new("x");
        let properties = encode(&fresh, None).unwrap();
        assert!(
            properties
                .headers()
                .as_ref()
                .is_none_or(|h| h.inner().is_empty())
        );
        assert_eq!(round_trip(&fresh), fresh);
        // Another timestamp than the id's needs the header, and keeps it exact.
        let dated = Message::new("x").with_timestamp(UNIX_EPOCH + Duration::from_millis(1_234_567));
        let properties = encode(&dated, None).unwrap();
        assert!(
            properties
                .headers()
                .as_ref()
                .unwrap()
                .contains_key(TIMESTAMP)
        );
        assert_eq!(round_trip(&dated), dated);
    }
}
