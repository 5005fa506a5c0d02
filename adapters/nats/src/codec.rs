//! How a courier message travels as a NATS message: the id as
//! `Nats-Msg-Id`, the other fields as headers (courier's wire headers),
//! values NATS would alter quoted.

use async_nats::header::IntoHeaderName;
use async_nats::{HeaderMap, HeaderName};
use courier_core::adapter;
use courier_core::adapter::origin::{self, Origin};
use courier_core::{Message, MessageId};

/// The JetStream deduplication header, which carries the message id.
pub(crate) const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// The NATS header name for a wire header `name`: courier's own names
/// (and `Nats-Msg-Id` for the id) without allocating, others copied.
pub(crate) fn header_name(name: &str) -> HeaderName {
    use courier_core::request::headers as request;
    const KNOWN: [&str; 12] = [
        adapter::wire::KEY,
        adapter::wire::CONTENT_TYPE,
        adapter::wire::TIMESTAMP,
        courier_core::message::CORRELATION_ID,
        courier_core::message::CAUSATION_ID,
        request::REQUEST_ID,
        request::REPLY_TO,
        request::DEADLINE,
        request::REPLY_STATUS,
        request::ERROR_KIND,
        request::ERROR_REASON,
        courier_core::telemetry::TRACEPARENT,
    ];
    if name == adapter::wire::ID {
        return HeaderName::from_static(NATS_MSG_ID);
    }
    KNOWN.iter().find(|known| **known == name).map_or_else(
        || name.into_header_name(),
        |known| HeaderName::from_static(known),
    )
}

/// NATS header values lose leading and trailing white space, and an empty
/// value is dropped. Such values, and any starting with `"`, travel quoted;
/// [`unquote`] restores them.
pub(crate) fn quote(value: &str) -> std::borrow::Cow<'_, str> {
    let needs = value.is_empty()
        || value.starts_with(char::is_whitespace)
        || value.ends_with(char::is_whitespace)
        || value.starts_with('"');
    if needs {
        format!("\"{value}\"").into()
    } else {
        value.into()
    }
}

/// The value [`quote`] was given.
pub(crate) fn unquote(value: &str) -> &str {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) if value.len() >= 2 => inner,
        _ => value,
    }
}

/// The courier message NATS `headers` and `payload` carry.
pub(crate) fn decode(
    headers: Option<&HeaderMap>,
    payload: bytes::Bytes,
) -> std::result::Result<Message, courier_core::HeaderError> {
    adapter::wire::decode(wire_headers(headers), payload, None, MessageId::new)
}

/// The headers of a NATS message as courier's wire headers: `Nats-Msg-Id`
/// is the message id, other `Nats-` headers are the server's, values are
/// unquoted. A message with `Nats-Msg-Id` and courier's timestamp header is
/// courier's; of any other the reserved headers are left out
/// ([`adapter::origin`]).
///
/// Nothing is collected: the few headers are walked once per question
/// (is there an id, a timestamp) and then once more, lazily, by the decoder.
pub(crate) fn wire_headers(headers: Option<&HeaderMap>) -> impl Iterator<Item = (&str, &[u8])> {
    let raw = move || {
        headers
            .into_iter()
            .flat_map(|h| h.iter())
            .map(|(name, values)| (<async_nats::HeaderName as AsRef<str>>::as_ref(name), values))
            .filter(|(name, _)| *name == NATS_MSG_ID || !name.starts_with("Nats-"))
            .filter_map(|(name, values)| {
                values
                    .first()
                    .map(|v| (name, unquote(v.as_str()).as_bytes()))
            })
    };
    let origin = Origin::from_fields(
        raw().any(|(name, _)| name == NATS_MSG_ID),
        raw().any(|(name, _)| name == adapter::wire::TIMESTAMP),
    );
    origin::trusted(raw(), origin).map(|(name, value)| {
        if name == NATS_MSG_ID {
            (adapter::wire::ID, value)
        } else {
            (name, value)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{quote, unquote};

    #[test]
    fn quoting_round_trips_values_nats_would_change() {
        for value in [
            "",
            " ",
            "  padded  ",
            "\"",
            "\"quoted\"",
            "\"x",
            "plain",
            "ü ✓",
        ] {
            assert_eq!(unquote(&quote(value)), value, "{value:?}");
        }
        assert_eq!(quote("plain"), "plain");
    }
}
