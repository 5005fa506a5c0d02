//! Who produced a received message, and which of its headers courier
//! trusts: the policy every adapter applies to what it receives.
//!
//! # Courier's messages and foreign ones
//!
//! Every message courier publishes carries its id and its timestamp in
//! courier's own encoding (see [`wire`](super::wire)): on Kafka the
//! [`ID`] and [`TIMESTAMP`] headers, on NATS `Nats-Msg-Id` and the
//! [`TIMESTAMP`] header. A received message with both is courier's
//! ([`Origin::Courier`]); any other one comes from a foreign producer
//! ([`Origin::Foreign`]). On RabbitMQ the id and timestamp travel in
//! generic AMQP properties that other producers set as well, so courier
//! marks its messages with the `app_id` property `courier`, and that mark
//! decides; on core NATS (requests and replies) courier packs its fields
//! into one `courier-fields` header, whose presence decides. The test is
//! what courier always writes, not a signature: a
//! foreign producer that writes the same fields is taken for courier.
//!
//! # What is trusted
//!
//! - Of courier's messages, every header, reserved ones
//!   ([`RESERVED_PREFIX`], `courier-`) included: correlation and causation
//!   ids, dead-letter details, request/reply fields. A reserved header that
//!   breaks courier's rules makes the message undecodable (the adapter
//!   dead-letters it, as its documentation says).
//! - Of a foreign message, no reserved header: a `courier-correlation-id`
//!   or `courier-whatever` set by another producer is left out, with a
//!   `tracing` debug line ([`untrusted`]), so handlers never see it as if
//!   courier had set it. The broker's own fields (`Nats-Msg-Id`, AMQP
//!   properties such as `message_id` and `correlation_id`, the Kafka record
//!   key and timestamp) are read as usual.
//! - Of every message, a header courier cannot carry (a value that is not
//!   UTF-8, an AMQP nested table or array, a name or value that breaks the
//!   rules in [`headers`](crate::headers)) is left out with a debug line
//!   ([`left_out`]) and the message is delivered without it, the same way on
//!   every adapter.

use crate::adapter::wire::{ID, TIMESTAMP};
use crate::headers::{Headers, RESERVED_PREFIX};

/// Who produced a received message; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// courier: the message carries courier's id and timestamp.
    Courier,
    /// Another producer: its reserved headers are not trusted.
    Foreign,
}

impl Origin {
    /// Courier's when the message carries both fields courier writes on
    /// every message: its id and its timestamp, in courier's encoding.
    pub fn from_fields(has_id: bool, has_timestamp: bool) -> Origin {
        if has_id && has_timestamp {
            Origin::Courier
        } else {
            Origin::Foreign
        }
    }

    /// The origin of a message whose fields all travel as wire headers
    /// (Kafka): courier's when [`ID`] and [`TIMESTAMP`] are among `names`.
    pub fn of_wire_headers<'a>(names: impl IntoIterator<Item = &'a str>) -> Origin {
        let (mut id, mut timestamp) = (false, false);
        for name in names {
            id |= name == ID;
            timestamp |= name == TIMESTAMP;
        }
        Origin::from_fields(id, timestamp)
    }
}

/// Whether `name` is in courier's reserved space ([`RESERVED_PREFIX`]).
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// Logs that the reserved header `name` of a foreign message is not
/// trusted and was left out.
pub fn untrusted(name: &str) {
    tracing::debug!(
        header = name,
        "foreign message: reserved header not trusted, left out"
    );
}

/// Logs that the header `name` cannot be carried by courier (`reason`)
/// and was left out.
pub fn left_out(name: &str, reason: &str) {
    tracing::debug!(
        header = name,
        reason,
        "header courier cannot carry, left out"
    );
}

/// The wire headers (name, raw value) of a received message that courier
/// keeps, by the [policy](self): a foreign message's reserved headers are
/// left out ([`untrusted`]); so is every header whose value is not UTF-8 or
/// whose name or value breaks courier's rules ([`left_out`]), except a
/// courier message's reserved ones, which [`wire::decode`](super::wire::decode)
/// then refuses (the message is corrupt, not foreign).
///
/// Lazy: each header is judged (and a left-out one logged) as the returned
/// iterator reaches it, and nothing is collected, so that receiving a
/// message allocates no list of its headers.
pub fn trusted<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    origin: Origin,
) -> impl Iterator<Item = (&'a str, &'a [u8])> {
    headers.into_iter().filter(move |&(name, value)| {
        if is_reserved(name) {
            if origin == Origin::Foreign {
                untrusted(name);
                return false;
            }
            return true;
        }
        match carriable(name, value) {
            Ok(()) => true,
            Err(reason) => {
                left_out(name, &reason);
                false
            }
        }
    })
}

/// Whether courier can carry the header: a UTF-8 value, and a name and
/// value within the rules of [`Headers`]. Allocates only to give the
/// reason of a header it refuses.
pub fn carriable(name: &str, value: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_owned())?;
    Headers::check(name, text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_message_keeps_no_reserved_header() {
        let headers: [(&str, &[u8]); 4] = [
            ("courier-correlation-id", b"forged"),
            ("courier-whatever", b"x"),
            ("plain", b"kept"),
            ("bad", &[0xff]),
        ];
        let origin = Origin::of_wire_headers(headers.iter().map(|(n, _)| *n));
        assert_eq!(origin, Origin::Foreign);
        assert_eq!(
            trusted(headers, origin).collect::<Vec<_>>(),
            [("plain", &b"kept"[..])]
        );
    }

    #[test]
    fn a_courier_message_keeps_its_reserved_headers() {
        let headers: [(&str, &[u8]); 5] = [
            (ID, b"0190b6b4-0000-7000-8000-000000000000"),
            (TIMESTAMP, b"1"),
            ("courier-correlation-id", b"flow"),
            ("plain", b"kept"),
            ("bad name", b"x"),
        ];
        let origin = Origin::of_wire_headers(headers.iter().map(|(n, _)| *n));
        assert_eq!(origin, Origin::Courier);
        let names: Vec<&str> = trusted(headers, origin).map(|(n, _)| n).collect();
        assert_eq!(names, [ID, TIMESTAMP, "courier-correlation-id", "plain"]);
    }
}
