//! [`MessageId`]: what identifies a message across retries and relays.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::headers::HeaderError;

/// A message id: a UUID v7 for messages courier creates, or any other text a
/// foreign producer used.
///
/// Ids are what deduplication keys on (JetStream's `Nats-Msg-Id`, the
/// idempotency store), so a message keeps its id across retries and relays.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(Repr);

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Repr {
    /// A UUID's 128 bits, the high half first (so ids order as their
    /// bytes do). Two aligned words rather than `Uuid`'s 16 bytes: the
    /// bytes, unaligned after the variant's tag, were copied in odd-sized
    /// pieces whose stores the next load waited for, on every clone of a
    /// message (one per handler attempt).
    Uuid([u64; 2]),
    Text(Arc<str>),
}

impl Repr {
    fn uuid(uuid: Uuid) -> Self {
        let bits = uuid.as_u128();
        Repr::Uuid([(bits >> 64) as u64, bits as u64])
    }

    fn to_uuid([high, low]: [u64; 2]) -> Uuid {
        Uuid::from_u128(u128::from(high) << 64 | u128::from(low))
    }
}

impl MessageId {
    /// A new time-ordered UUID v7 id (ordered by creation within a thread;
    /// by millisecond across threads).
    pub fn new() -> Self {
        Self::at(SystemTime::now())
    }

    /// A UUID v7 id for the time `now`, from this thread's v7 context (one
    /// shared context would be a lock every message contends on).
    pub(crate) fn at(now: SystemTime) -> Self {
        thread_local! {
            static CONTEXT: uuid::ContextV7 = const { uuid::ContextV7::new() };
        }
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let uuid = CONTEXT.with(|context| {
            Uuid::new_v7(uuid::Timestamp::from_unix(
                context,
                since_epoch.as_secs(),
                since_epoch.subsec_nanos(),
            ))
        });
        MessageId(Repr::uuid(uuid))
    }

    /// Reads an id from its text form. A UUID is stored as one; anything else
    /// non-empty without line breaks and at most 256 bytes is kept as text.
    ///
    /// # Errors
    ///
    /// [`HeaderError::InvalidValue`] for an empty, overlong or multi-line id.
    pub fn parse(text: &str) -> Result<Self, HeaderError> {
        if let Ok(uuid) = Uuid::try_parse(text) {
            return Ok(MessageId(Repr::uuid(uuid)));
        }
        if text.is_empty() || text.len() > 256 || crate::headers::has_line_break(text) {
            return Err(HeaderError::InvalidValue("message id".into()));
        }
        Ok(MessageId(Repr::Text(text.into())))
    }

    /// The UUID, when the id is one.
    pub fn as_uuid(&self) -> Option<Uuid> {
        match &self.0 {
            Repr::Uuid(bits) => Some(Repr::to_uuid(*bits)),
            Repr::Text(_) => None,
        }
    }

    /// The id's text form, written into `buf` for a UUID (no allocation,
    /// unlike `to_string`): for codecs that write it on every publish.
    ///
    /// ```
    /// let id = courier_core::MessageId::new();
    /// let mut buf = [0; 36];
    /// assert_eq!(id.as_text(&mut buf), id.to_string());
    /// ```
    pub fn as_text<'b>(&'b self, buf: &'b mut [u8; uuid::fmt::Hyphenated::LENGTH]) -> &'b str {
        match &self.0 {
            Repr::Uuid(bits) => Repr::to_uuid(*bits).hyphenated().encode_lower(buf),
            Repr::Text(text) => text,
        }
    }

    /// The creation time, in milliseconds since the Unix epoch, of a UUID
    /// v7 id (its first 48 bits, RFC 9562); `None` for any other id. Codecs
    /// use it to leave out a timestamp the id already carries.
    pub fn v7_millis(&self) -> Option<u64> {
        let uuid = self.as_uuid().filter(|u| u.get_version_num() == 7)?;
        let mut millis = [0u8; 8];
        millis[2..].copy_from_slice(&uuid.as_bytes()[..6]);
        Some(u64::from_be_bytes(millis))
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for MessageId {
    fn from(uuid: Uuid) -> Self {
        MessageId(Repr::uuid(uuid))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Uuid(bits) => fmt::Display::fmt(&Repr::to_uuid(*bits).hyphenated(), f),
            Repr::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_ids_order_and_read_back_as_their_uuids() {
        // Differences in each half and at the byte where the halves meet.
        let uuids = [
            "00000000-0000-7000-8000-000000000000",
            "00000000-0000-7000-8000-000000000001",
            "00000000-0000-7000-ff00-000000000000",
            "00000000-0000-7001-0000-000000000000",
            "00000000-0000-70ff-ffff-ffffffffffff",
            "00000000-0001-7000-0000-000000000000",
            "ffffffff-ffff-7fff-bfff-ffffffffffff",
        ]
        .map(|text| Uuid::parse_str(text).unwrap());
        for pair in uuids.windows(2) {
            let (a, b) = (MessageId::from(pair[0]), MessageId::from(pair[1]));
            assert_eq!(a.cmp(&b), pair[0].cmp(&pair[1]), "{a} vs {b}");
        }
        for uuid in uuids {
            let id = MessageId::from(uuid);
            assert_eq!(id.as_uuid(), Some(uuid));
            assert_eq!(id.to_string(), uuid.hyphenated().to_string());
            assert_eq!(MessageId::parse(&id.to_string()).unwrap(), id);
        }
        // UUIDs order before text ids, as before.
        assert!(MessageId::from(uuids[6]) < MessageId::parse("a").unwrap());
    }
}
