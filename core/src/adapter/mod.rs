//! Plumbing for adapter authors: what a crate that connects courier to a
//! broker needs and an application never should.
//!
//! - [`wire`]: how a message travels as broker headers.
//! - [`origin`]: whether a received message is courier's or a foreign
//!   producer's, and which of its headers are trusted (the same policy on
//!   every adapter).
//! - [`Acknowledger`]: how an adapter settles a delivery; [`delivery`]
//!   makes the [`Delivery`] an application receives.
//! - [`restore_header`] and [`headers_mut`]: restoring courier's reserved
//!   headers on a received message (applications cannot set them; a header
//!   named `courier-*` is refused by [`Headers::insert`]).
//! - [`check_payloads`]: the payload-size check of a publish.
//! - [`OncePerKey`]: setup (declaring an exchange, creating a topic) run
//!   once however many publishes race for it.
//! - [`dead_letter_retry_delays`] and [`dead_letter_retry_delay`]: the
//!   backoff between dead-letter publishes of one message that failed
//!   (a copy of a message the adapter cannot decode, say).
//! - [`url`]: reading a broker URL and its options the same way on every
//!   adapter (the shared option names, durations, unknown options refused).
//! - [`backoff`]: the jittered, capped exponential wait of every reconnect
//!   and retry loop.
//! - [`TaskSet`]: the detached tasks of a broker, which closing waits for.
//!
//! The facade crate `courier` re-exports this module without documenting
//! it. Adapters are held to the contract by the conformance suite in
//! `courier-testkit`.

pub mod backoff;
mod once_per_key;
pub mod origin;
mod task_set;
pub mod url;
pub mod wire;

pub use once_per_key::OncePerKey;
pub use task_set::TaskSet;

pub use crate::dead_letter_retry::{
    DEAD_LETTER_RETRY_MAX_DELAY, DEAD_LETTER_RETRY_MIN_DELAY, dead_letter_retry_delay,
    dead_letter_retry_delays,
};

use std::sync::Arc;

pub use crate::delivery::Acknowledger;
use crate::delivery::Delivery;
use crate::error::{Error, Result};
use crate::headers::{HeaderError, Headers};
use crate::message::Message;
pub use crate::telemetry::instrumented_publish;

/// A delivery of `message` from `topic`, settled through `acker`, with the
/// broker's delivery count (this delivery included) when the broker tells.
pub fn delivery(
    message: Message,
    topic: Arc<str>,
    acker: Box<dyn Acknowledger>,
    delivery_count: Option<u32>,
) -> Delivery {
    Delivery::new(message, topic, acker, delivery_count)
}

/// A received message with the `id` and `timestamp` it travelled with
/// (truncated to milliseconds), and no key, headers or content type yet:
/// unlike [`Message::new`], it draws no id and reads no clock.
pub fn received(
    id: crate::message::MessageId,
    timestamp: std::time::SystemTime,
    payload: bytes::Bytes,
) -> Message {
    Message::received(id, timestamp, payload)
}

/// Sets a received message's key from text read off the wire: one
/// allocation, the shared key itself ([`Message::with_key`] takes an owned
/// `String`, a copy more when the text is borrowed).
pub fn set_key(message: &mut Message, key: &str) {
    message.set_key_text(key);
}

/// Sets a received message's content type from text read off the wire:
/// common types (JSON, text, bytes, …) are shared static strings, without
/// an allocation.
pub fn set_content_type(message: &mut Message, content_type: &str) {
    message.set_content_type_text(content_type);
}

/// Whether `text` holds a line break (CR or LF), which no header value
/// may: what [`Headers::insert`] refuses. An adapter whose wire allows line
/// breaks in header values tests with it before it keeps one.
pub fn has_line_break(text: &str) -> bool {
    crate::headers::has_line_break(text)
}

/// The headers of a message, reserved ones included, to change in place.
pub fn headers_mut(message: &mut Message) -> &mut Headers {
    message.headers_mut()
}

/// Inserts a header whose name may use the reserved prefix: a courier field
/// that travelled as a header. courier's own names are not copied: pass
/// the name as read from the wire (`&str`).
///
/// # Errors
///
/// As [`Headers::insert`], except that reserved names are accepted.
pub fn restore_header(
    headers: &mut Headers,
    name: impl AsRef<str> + Into<String>,
    value: impl Into<String>,
) -> Result<(), HeaderError> {
    headers.insert_reserved(name, value)
}

/// Checks the payload sizes of messages about to be published against a
/// broker's limit.
///
/// # Errors
///
/// [`Error::PayloadTooLarge`] for the first payload over `limit` bytes.
pub fn check_payloads(messages: &[Message], limit: usize) -> Result<()> {
    match messages.iter().find(|m| m.payload().len() > limit) {
        Some(m) => Err(Error::PayloadTooLarge {
            size: m.payload().len(),
            limit,
        }),
        None => Ok(()),
    }
}
