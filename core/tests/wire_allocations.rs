//! How many allocations carrying a message as broker headers costs
//! (`adapter::wire`, used by the Kafka and NATS adapters on every publish
//! and every receive): encoding none, decoding only what the message keeps.
//!
//! One test in this binary: the allocator below counts every thread's
//! allocations, so nothing else may run beside it.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use courier_core::adapter::origin::{self, Origin};
use courier_core::adapter::wire::{self, Native};
use courier_core::{Message, MessageId};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Allocations (and reallocations) made while `f` runs, and its result.
fn counted<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let region = Region::new(GLOBAL);
    let result = f();
    let stats = region.change();
    (stats.allocations + stats.reallocations, result)
}

/// The headers `message` travels with, as owned pairs.
fn encoded(message: &Message, native: Native) -> Vec<(String, Vec<u8>)> {
    let mut headers = Vec::new();
    wire::encode(message, native, |name, value| {
        headers.push((name.to_owned(), value.as_bytes().to_vec()));
    });
    headers
}

/// Decodes `headers` the way a receiving adapter does: trusted headers
/// only, `native_key` from the broker's own field.
fn decode(headers: &[(String, Vec<u8>)], payload: &Bytes, native_key: Option<&str>) -> Message {
    let pairs = || headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
    let origin = Origin::of_wire_headers(pairs().map(|(n, _)| n));
    wire::decode(
        origin::trusted(pairs(), origin),
        payload.clone(),
        native_key,
        MessageId::new,
    )
    .expect("decodes")
}

#[test]
fn encoding_allocates_nothing_and_decoding_only_what_the_message_keeps() {
    let payload = Bytes::from_static(b"{\"sku\":\"A-1\"}");
    let at = UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
    let plain = Message::new(payload.clone())
        .with_content_type("application/json")
        .with_timestamp(at);
    let keyed = plain.clone().with_key("order-7");
    let text_id = Message::new(payload.clone())
        .with_id(MessageId::parse("order-7/created").expect("an id"))
        .with_content_type("application/vnd.shop+json")
        .with_timestamp(at);

    // Encoding: the adapter's `put` is all that may allocate.
    for message in [&plain, &keyed, &text_id] {
        let (allocations, ()) = counted(|| wire::encode(message, Native::default(), |_, _| {}));
        assert_eq!(allocations, 0, "encoding {message:?}");
    }

    // Decoding: a UUID id, a common content type and the timestamp cost
    // nothing; a key is one shared string; a text id and an uncommon
    // content type one each.
    let cases = [
        ("no key", &plain, Native::default(), None, 0),
        ("key in a header", &keyed, Native::default(), None, 1),
        (
            "key in the broker's field",
            &keyed,
            Native { key: true },
            Some("order-7"),
            1,
        ),
        (
            "text id, other content type",
            &text_id,
            Native::default(),
            None,
            2,
        ),
    ];
    for (case, message, native, native_key, expected) in cases {
        let headers = encoded(message, native);
        let (allocations, decoded) = counted(|| decode(&headers, &payload, native_key));
        assert_eq!(allocations, expected, "decoding, {case}");
        assert_eq!(&decoded, message, "decoding, {case}: the same message");
    }

    // Judging a received message's own headers: those courier can carry
    // are kept without an allocation (the message's headers are then
    // built once, by `decode`).
    let user: [(&str, &[u8]); 3] = [
        ("tenant", b"acme"),
        ("x-request-source", b"checkout/v2"),
        ("empty", b""),
    ];
    for origin in [Origin::Courier, Origin::Foreign] {
        let (allocations, kept) = counted(|| origin::trusted(user, origin).count());
        assert_eq!(kept, 3, "judging user headers of a {origin:?} message");
        assert_eq!(
            allocations, 0,
            "judging user headers of a {origin:?} message"
        );
    }
}
