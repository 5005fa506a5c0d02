//! The message: what is published, stored by the broker and delivered.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::headers::{HeaderError, Headers};
pub use crate::id::MessageId;

/// Header carrying the correlation id (the id shared by every message of one flow).
pub const CORRELATION_ID: &str = "courier-correlation-id";
/// Header carrying the causation id (the id of the message that caused this one).
pub const CAUSATION_ID: &str = "courier-causation-id";
/// Content type set by [`Message::from_json`].
pub const JSON: &str = "application/json";

/// A message: id, optional ordering key, headers, payload, content type and
/// timestamp.
///
/// The key decides ordering: messages with the same key are delivered and
/// handled in publish order (Kafka partitions by it, the consumer runtime runs
/// one lane per key). The timestamp has millisecond precision so that it
/// round-trips exactly through every broker.
///
/// # Examples
///
/// ```
/// use courier_core::Message;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct OrderPlaced { order: u64 }
///
/// let msg = Message::from_json(&OrderPlaced { order: 7 })?
///     .with_key("customer-42")
///     .with_headers([("tenant", "acme")])?;
/// assert_eq!(msg.content_type(), Some("application/json"));
/// assert_eq!(msg.json::<OrderPlaced>()?, OrderPlaced { order: 7 });
///
/// let reply = Message::new("ok").caused_by(&msg);
/// assert_eq!(reply.causation_id(), Some(msg.id().to_string().as_str()));
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    id: MessageId,
    /// Shared by clones: a message is cloned for each handler attempt.
    key: Option<Arc<str>>,
    headers: Headers,
    payload: Bytes,
    content_type: Option<ContentType>,
    timestamp: SystemTime,
}

/// Common content types, kept without a copy when a message is built or
/// decoded with one of them.
const KNOWN_CONTENT_TYPES: [&str; 4] = [
    JSON,
    "text/plain",
    "application/octet-stream",
    "application/x-protobuf",
];

/// A content type, shared by clones: a message is cloned for each handler
/// attempt, and a content type decoded from the wire would otherwise be
/// copied each time.
#[derive(Clone)]
enum ContentType {
    Static(&'static str),
    Shared(Arc<str>),
}

impl ContentType {
    fn new(content_type: Cow<'static, str>) -> Self {
        match content_type {
            Cow::Borrowed(known) => ContentType::Static(known),
            Cow::Owned(text) => ContentType::from_text(&text),
        }
    }

    /// A content type read from the wire: a common one is kept as its
    /// static string, another copied once.
    fn from_text(text: &str) -> Self {
        match KNOWN_CONTENT_TYPES.iter().find(|known| **known == text) {
            Some(known) => ContentType::Static(known),
            None => ContentType::Shared(text.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            ContentType::Static(text) => text,
            ContentType::Shared(text) => text,
        }
    }
}

impl PartialEq for ContentType {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ContentType {}

impl fmt::Debug for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Message {
    /// A message with a new UUID v7 id, the current time and no key, headers
    /// or content type.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        let now = SystemTime::now();
        Message {
            id: MessageId::at(now),
            key: None,
            headers: Headers::new(),
            payload: payload.into(),
            content_type: None,
            timestamp: truncate_millis(now),
        }
    }

    /// A message as received: `id` and `timestamp` given, so no id is drawn
    /// and no clock read (adapters decoding what a broker delivered).
    pub(crate) fn received(id: MessageId, timestamp: SystemTime, payload: Bytes) -> Self {
        Message {
            id,
            key: None,
            headers: Headers::new(),
            payload,
            content_type: None,
            timestamp: truncate_millis(timestamp),
        }
    }

    /// A message whose payload is `value` as JSON, content type `application/json`.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when serde cannot serialize the value.
    pub fn from_json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let payload = serde_json::to_vec(value).map_err(|source| Error::Encode {
            type_name: std::any::type_name::<T>(),
            source: Box::new(source),
        })?;
        Ok(Message::new(payload).with_content_type(JSON))
    }

    /// Decodes the payload as JSON into `T`.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] naming the message id and the target type when the
    /// payload is not JSON of that shape. Such a message will never decode,
    /// so the error is not retryable.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|source| Error::Decode {
            id: self.id.clone(),
            type_name: std::any::type_name::<T>(),
            source: Box::new(source),
        })
    }

    /// Decodes the payload as JSON into `T`.
    ///
    /// # Errors
    ///
    /// As [`Message::json`].
    #[deprecated(since = "0.2.0", note = "renamed to `Message::json`")]
    pub fn json_as<T: DeserializeOwned>(&self) -> Result<T> {
        self.json()
    }

    /// Sets the id.
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = id;
        self
    }

    /// Sets the ordering key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into().into());
        self
    }

    /// Adds a header.
    ///
    /// # Errors
    ///
    /// [`HeaderError`] as for [`Headers::insert`]: a reserved or invalid name,
    /// a value with a line break, or headers grown too large.
    pub fn with_header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, HeaderError> {
        self.headers.insert(name, value)?;
        Ok(self)
    }

    /// Adds several headers, checked together: one `?` for the lot.
    ///
    /// # Errors
    ///
    /// The first [`HeaderError`], as for [`Headers::insert`]; the message is
    /// then dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use courier_core::Message;
    /// # fn main() -> Result<(), courier_core::HeaderError> {
    /// let msg = Message::new("hi").with_key("k").with_headers([("tenant", "acme"), ("region", "eu")])?;
    /// assert_eq!(msg.header("region"), Some("eu"));
    /// # Ok(()) }
    /// ```
    pub fn with_headers<N, V>(
        mut self,
        headers: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Self, HeaderError>
    where
        N: Into<String>,
        V: Into<String>,
    {
        for (name, value) in headers {
            self.headers.insert(name, value)?;
        }
        Ok(self)
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<Cow<'static, str>>) -> Self {
        self.content_type = Some(ContentType::new(content_type.into()));
        self
    }

    /// Sets the content type from text decoded off the wire, without an
    /// intermediate `String`.
    pub(crate) fn set_content_type_text(&mut self, content_type: &str) {
        self.content_type = Some(ContentType::from_text(content_type));
    }

    /// Sets the key from text decoded off the wire: one allocation, the
    /// shared key itself.
    pub(crate) fn set_key_text(&mut self, key: &str) {
        self.key = Some(key.into());
    }

    /// Sets the timestamp (truncated to milliseconds).
    pub fn with_timestamp(mut self, timestamp: SystemTime) -> Self {
        self.timestamp = truncate_millis(timestamp);
        self
    }

    /// Sets the correlation id.
    ///
    /// # Errors
    ///
    /// [`HeaderError::InvalidValue`] when the id has a line break.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Result<Self, HeaderError> {
        self.headers.insert_own(CORRELATION_ID, id)?;
        Ok(self)
    }

    /// Sets the causation id.
    ///
    /// # Errors
    ///
    /// [`HeaderError::InvalidValue`] when the id has a line break.
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Result<Self, HeaderError> {
        self.headers.insert_own(CAUSATION_ID, id)?;
        Ok(self)
    }

    /// Marks this message as caused by `cause`: the causation id becomes the
    /// cause's id and the correlation id is carried over (or starts at the
    /// cause's id), so a whole flow can be followed.
    pub fn caused_by(mut self, cause: &Message) -> Self {
        // The id as text without the formatting machinery (every reply and
        // every message a handler sends on is caused by one).
        let mut buf = [0; 36];
        let id = cause.id.as_text(&mut buf);
        let correlation = cause.correlation_id().unwrap_or(id).to_owned();
        // Ids never hold line breaks and stay far below the header limit.
        let _ = self.headers.insert_own(CAUSATION_ID, id.to_owned());
        let _ = self.headers.insert_own(CORRELATION_ID, correlation);
        self
    }

    /// The id.
    pub fn id(&self) -> &MessageId {
        &self.id
    }

    /// The ordering key.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The headers, reserved ones included.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The headers, for courier's own crates to add reserved ones.
    pub(crate) fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// One header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The content type.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_ref().map(ContentType::as_str)
    }

    /// When the message was created, to the millisecond.
    pub fn timestamp(&self) -> SystemTime {
        self.timestamp
    }

    /// The timestamp as milliseconds since the Unix epoch.
    pub fn timestamp_millis(&self) -> u64 {
        self.timestamp
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// The correlation id.
    pub fn correlation_id(&self) -> Option<&str> {
        self.headers.get(CORRELATION_ID)
    }

    /// The causation id.
    pub fn causation_id(&self) -> Option<&str> {
        self.headers.get(CAUSATION_ID)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .field("content_type", &self.content_type)
            .field("timestamp_millis", &self.timestamp_millis())
            .finish()
    }
}

fn truncate_millis(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_millis(d.as_millis() as u64),
        Err(_) => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Order {
        id: u64,
    }

    #[test]
    fn content_types_from_the_wire_are_shared_by_clones() {
        // Decoded from the wire: an owned string.
        let json = Message::new("{}").with_content_type(JSON.to_owned());
        let custom = Message::new("x").with_content_type("application/vnd.acme+json".to_owned());
        assert!(matches!(json.content_type, Some(ContentType::Static(_))));
        let (Some(ContentType::Shared(first)), Some(ContentType::Shared(second))) =
            (&custom.content_type, &custom.clone().content_type)
        else {
            panic!("a custom content type is shared");
        };
        assert!(Arc::ptr_eq(first, second));
        assert_eq!(custom.content_type(), Some("application/vnd.acme+json"));
        // However it was made, the same content type compares equal.
        assert_eq!(json.clone().with_content_type(JSON), json);
        assert_eq!(json.content_type(), Some(JSON));
    }

    #[test]
    fn ids_are_uuid_v7_and_parse_back() {
        let id = MessageId::new();
        assert_eq!(id.as_uuid().unwrap().get_version_num(), 7);
        assert_eq!(MessageId::parse(&id.to_string()).unwrap(), id);
        let foreign = MessageId::parse("order-17").unwrap();
        assert_eq!(foreign.to_string(), "order-17");
        assert!(foreign.as_uuid().is_none());
        assert!(MessageId::parse("").is_err());
        assert!(MessageId::parse("a\nb").is_err());
    }

    #[test]
    fn ids_of_one_thread_are_strictly_increasing() {
        let ids: Vec<Uuid> = (0..10_000)
            .map(|_| Message::new("").id().as_uuid().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn json_round_trip_and_mismatch_is_a_typed_error() {
        let msg = Message::from_json(&Order { id: 3 }).unwrap();
        assert_eq!(msg.json::<Order>().unwrap(), Order { id: 3 });
        let bad = Message::new("{\"id\":\"three\"}");
        let err = bad.json::<Order>().unwrap_err();
        match &err {
            Error::Decode { id, type_name, .. } => {
                assert_eq!(id, bad.id());
                assert!(type_name.ends_with("Order"), "{type_name}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!err.is_retryable());
    }

    #[test]
    fn timestamps_have_millisecond_precision() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let msg = Message::new("").with_timestamp(t);
        assert_eq!(msg.timestamp_millis(), 1_700_000_000_123);
        assert_eq!(
            msg.timestamp(),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
    }

    #[test]
    fn causation_chain_keeps_the_correlation_id() {
        let first = Message::new("a");
        let second = Message::new("b").caused_by(&first);
        let third = Message::new("c").caused_by(&second);
        assert_eq!(
            second.correlation_id(),
            Some(first.id().to_string().as_str())
        );
        assert_eq!(
            third.correlation_id(),
            Some(first.id().to_string().as_str())
        );
        assert_eq!(third.causation_id(), Some(second.id().to_string().as_str()));
    }

    #[test]
    fn user_cannot_overwrite_reserved_headers() {
        let err = Message::new("x")
            .with_header(CORRELATION_ID, "y")
            .unwrap_err();
        assert_eq!(err, HeaderError::Reserved(CORRELATION_ID.into()));
    }
}
