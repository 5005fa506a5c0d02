//! How a courier message travels as a NATS message: the id as
//! `Nats-Msg-Id`, the other fields as headers (courier's wire headers),
//! values NATS would alter quoted.

use async_nats::header::IntoHeaderName;
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use courier_core::adapter;
use courier_core::adapter::origin::{self, Origin};
use courier_core::{Message, MessageId};
use serde::Deserialize;

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

/// `value` as a NATS header value, checked for line breaks by courier's
/// vectorized test instead of async-nats's: its `From` impls scan with a
/// multi-char pattern (~7 instructions a byte, about 1,100 for a reply's
/// fields, on every header of every message sent); its `Deserialize` (a
/// transparent string) takes the `String` as it is. courier's headers
/// hold no line breaks and its fields are escaped, so the check passes;
/// a value that fails it goes to async-nats's own `From`, which refuses
/// it as before.
pub(crate) fn header_value(value: String) -> HeaderValue {
    if adapter::has_line_break(&value) {
        return HeaderValue::from(value);
    }
    let value = serde::de::value::StringDeserializer::<serde::de::value::Error>::new(value);
    HeaderValue::deserialize(value).expect("a header value is any string")
}

/// Adds the wire header `name: value` to NATS `headers`: the name as NATS
/// spells it ([`header_name`]), the value quoted ([`quote`]).
pub(crate) fn insert_header(headers: &mut HeaderMap, name: &str, value: &str) {
    headers.insert(header_name(name), header_value(quote(value).into_owned()));
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
    use async_nats::HeaderValue;

    use super::{header_value, quote, unquote};

    #[test]
    fn header_values_are_taken_as_given_and_line_breaks_still_refused() {
        for value in ["plain", "", "\" spaced \"", "ü;%3B", "a=b;c=d"] {
            assert_eq!(header_value(value.to_owned()), HeaderValue::from(value));
            assert_eq!(header_value(value.to_owned()).as_str(), value);
        }
        for broken in ["a\r\nb", "\n", "end\r"] {
            let refused = std::panic::catch_unwind(|| header_value(broken.to_owned()));
            assert!(refused.is_err(), "{broken:?} was let through");
        }
    }

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
