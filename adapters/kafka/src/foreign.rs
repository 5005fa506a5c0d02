//! Records of other producers: the id they are received with, and the
//! headers of a record copied as it is to the dead-letter topic.

use courier_core::adapter::origin::{self, Origin};
use courier_core::adapter::wire;
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};

/// The record's headers for its dead-letter copy, which courier writes: a
/// courier record's as they are; of a foreign record's the reserved ones
/// left out (not trusted) and courier's `id` (`<topic>-<partition>-<offset>`,
/// the id it was received with) and the record's timestamp added, so that the copy is
/// courier's and its dead-letter headers are read back.
pub(crate) fn dead_letter_headers(
    original: Option<&BorrowedHeaders>,
    id: &str,
    timestamp_ms: Option<i64>,
) -> OwnedHeaders {
    let original: Vec<Header<'_, &[u8]>> = original
        .map(|headers| headers.iter().collect())
        .unwrap_or_default();
    let origin = Origin::of_wire_headers(original.iter().map(|header| header.key));
    let mut headers = OwnedHeaders::new();
    for header in original {
        if origin == Origin::Foreign && origin::is_reserved(header.key) {
            origin::untrusted(header.key);
            continue;
        }
        headers = headers.insert(header);
    }
    if origin == Origin::Foreign {
        let millis = timestamp_ms.unwrap_or(0).max(0).to_string();
        for (key, value) in [(wire::ID, id), (wire::TIMESTAMP, millis.as_str())] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
    }
    headers
}

/// The id a record without courier's id is received with:
/// `<topic>-<partition>-<offset>`.
pub(crate) fn record_id(topic: &str, partition: i32, offset: i64) -> String {
    use std::fmt::Write as _;
    let mut id = String::with_capacity(topic.len() + 32);
    let _ = write!(id, "{topic}-{partition}-{offset}");
    id
}
