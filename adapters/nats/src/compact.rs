//! How requests and replies travel over core NATS: courier's own fields
//! packed into one header, [`FIELDS`], instead of one header each.
//!
//! Every NATS header costs the client a map entry and a few allocations to
//! write and as many to parse; a request carried four and its reply five,
//! which was most of courier's cost per round trip. Packed, a request
//! carries one header and a reply one (plus any user header, and the
//! plain `courier-` headers listed below).
//!
//! The value is `name=value;` fields in this order, each present only when
//! it says something:
//!
//! | field | what | left out when |
//! |---|---|---|
//! | `id` | the message id | never |
//! | `ts` | the timestamp, milliseconds since the Unix epoch | it is the id's own (a UUID v7 of that millisecond, as every `Message::new`) |
//! | `ct` | the content type | there is none |
//! | `key` | the ordering key | there is none |
//! | `dl` | a request's deadline ([`DEADLINE`]), milliseconds since the Unix epoch | not a request |
//! | `corr` | the correlation id ([`CORRELATION_ID`]) | there is none |
//! | `cause` | the causation id ([`CAUSATION_ID`]) | there is none |
//!
//! In values `%`, `;`, CR and LF are escaped as `%25`, `%3B`, `%0D`, `%0A`;
//! every field ends with `;`, so the value never ends in white space NATS
//! would trim. A reader ignores fields it does not know.
//!
//! Everything else travels as its own header, as on JetStream
//! ([`crate::codec`]): user headers, `traceparent`, and the reserved
//! request/reply headers a reply may carry (`courier-request-id` of a
//! request that travelled through JetStream, `courier-reply-status: error`
//! with `courier-error-kind` and `courier-error-reason` on an error reply).
//! A successful reply carries no status: a reply without
//! [`REPLY_STATUS`] is a success. The request id and the reply address
//! travel in the request's reply subject, not in headers.
//!
//! A message with [`FIELDS`] is courier's (its reserved headers are
//! trusted, [`courier_core::adapter::origin`]); one without is read as any
//! NATS message ([`crate::codec::decode`]): a plain client's request, or a
//! reply written by an earlier courier, which still decodes.
//!
//! **A request with nothing but these fields carries no header at all**:
//! its fields travel as the last token of its reply subject instead,
//! `<inbox>.<request id>.courier:id=…;dl=…;rf=1;` ([`subject_fields`]), in the
//! same `name=value;` form. One header cost async-nats more than the rest
//! of a round trip's client work (it allocates a map, hashes the name, and
//! checks each character of the value on both sides). A responder sends
//! its reply to that subject as to any reply subject, so a plain responder
//! still answers it, and a server that only lets responders publish to the
//! reply subjects they received (`allow_responses`) still lets the reply
//! through. A request goes with the [`FIELDS`] header instead when it has
//! anything else (a key, a user header, `traceparent`), or a value that
//! cannot be part of a subject token: one that is not printable ASCII, or
//! holds `.`, `;`, `%`, `*` or `>`. A reader takes the subject's fields only
//! from a request without [`FIELDS`].
//!
//! **So does the reply to such a request**, when its requester asked for
//! that (the request's token ends with `rf=1;`, which courier's requesters
//! write and older responders ignore) and the reply has nothing but fields
//! a token can hold: its fields travel as the reply's own reply subject
//! (the NATS message's reply field, which a reply does not otherwise use),
//! `courier:id=…;ct=…;corr=…;cause=…;` ([`reply_fields`]). The reply is
//! still published to the request's reply subject, so `allow_responses`
//! lets it through as before. An error reply keeps the header (its status,
//! kind and reason are headers of their own), as does a reply with a key, a
//! user header or `traceparent`, and every reply to a requester that did
//! not ask. A reader takes a reply's fields from its reply subject only
//! when it has no [`FIELDS`].

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;
use courier_core::adapter::{self, origin, wire};
use courier_core::message::{CAUSATION_ID, CORRELATION_ID};
use courier_core::request::headers::{DEADLINE, REPLY_STATUS};
use courier_core::{HeaderError, Message, MessageId};

use crate::codec::{header_value, insert_header, unquote};

/// The header that carries courier's fields of a request or a reply.
pub(crate) const FIELDS: &str = "courier-fields";

const ID: &str = "id";
const TIMESTAMP: &str = "ts";
const CONTENT_TYPE: &str = "ct";
const KEY: &str = "key";

/// The field of a request's deadline.
const DEADLINE_FIELD: &str = "dl";

/// Reserved headers that travel as fields, with their field names.
const PACKED: [(&str, &str); 3] = [
    (DEADLINE, DEADLINE_FIELD),
    (CORRELATION_ID, "corr"),
    (CAUSATION_ID, "cause"),
];

/// The [`REPLY_STATUS`] of a successful reply, which is left out.
const STATUS_OK: &str = "ok";

/// The NATS headers a reply (or any message) travels with over core NATS.
pub(crate) fn encode(message: &Message) -> HeaderMap {
    encode_with_deadline(message, None)
}

/// The NATS headers of a request, whose request id and reply address
/// travel in its reply subject and whose deadline is not among its
/// headers: the `dl` field carries `deadline_ms`.
pub(crate) fn encode_request(message: &Message, deadline_ms: u64) -> HeaderMap {
    encode_with_deadline(message, Some(deadline_ms))
}

fn encode_with_deadline(message: &Message, deadline_ms: Option<u64>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // Room for the id, a content type, a deadline and two ids of the flow
    // (a reply's correlation and causation) without growing.
    let mut fields = String::with_capacity(192);
    let id = message.id();
    if !push_uuid(&mut fields, id) {
        push(&mut fields, ID, &id.to_string());
    }
    let millis = message.timestamp_millis();
    if id.v7_millis() != Some(millis) {
        push_number(&mut fields, TIMESTAMP, millis);
    }
    if let Some(content_type) = message.content_type() {
        push(&mut fields, CONTENT_TYPE, content_type);
    }
    if let Some(key) = message.key() {
        push(&mut fields, KEY, key);
    }
    if let Some(deadline_ms) = deadline_ms {
        push_number(&mut fields, DEADLINE_FIELD, deadline_ms);
    }
    for (name, value) in message.headers().iter() {
        if let Some((_, field)) = PACKED.iter().find(|(header, _)| *header == name) {
            push(&mut fields, field, value);
        } else if name == REPLY_STATUS && value == STATUS_OK {
            continue;
        } else {
            insert_header(&mut headers, name, value);
        }
    }
    headers.insert(HeaderName::from_static(FIELDS), header_value(fields));
    headers
}

/// What opens the last token of a request's reply subject when that token
/// carries the request's fields ([`subject_fields`]), and a reply's own
/// reply subject when it carries the reply's ([`reply_fields`]).
pub(crate) const SUBJECT_FIELDS: &str = "courier:";

/// The field with which a request's subject token tells the responder that
/// its requester reads a reply's fields from the reply's own reply subject
/// ([`reply_fields`]). A responder that does not know it ignores it (and
/// replies with the header), as a requester that does not set it gets the
/// header.
const REPLY_FIELDS_FIELD: &str = "rf";

/// The request's fields (with its deadline `deadline_ms`) as one token of
/// a reply subject, `courier:id=…;dl=…;rf=1;`, when every one of them can
/// travel there: the request then needs no header. `None` when the request
/// has anything the token cannot carry (see the module docs); it then
/// travels with [`encode_request`]'s header.
pub(crate) fn subject_fields(message: &Message, deadline_ms: u64) -> Option<String> {
    let mut token = token_fields(message, Some(deadline_ms))?;
    token.push_str(REPLY_FIELDS_FIELD);
    token.push_str("=1;");
    Some(token)
}

/// The reply's fields as the reply subject it is published with,
/// `courier:id=…;corr=…;cause=…;`, when its request asked for that (the
/// token of `reply_subject`, the request's reply subject, has the
/// [`REPLY_FIELDS_FIELD`]) and every one of them can travel there: the
/// reply then needs no header. `None` otherwise: it travels with
/// [`encode`]'s header, as an error reply (its status, kind and reason are
/// headers of their own) always does.
pub(crate) fn reply_fields(reply_subject: &str, reply: &Message) -> Option<String> {
    let asked = subject_token(reply_subject).is_some_and(|token| Fields::read(token).reply_fields);
    if !asked {
        return None;
    }
    token_fields(reply, None)
}

/// The fields of `message` (with a request's deadline) as a subject token,
/// when every one of them can be part of one; a successful reply's status
/// is left out, as in the header.
fn token_fields(message: &Message, deadline_ms: Option<u64>) -> Option<String> {
    if message.key().is_some() {
        return None;
    }
    // Room for the id, a content type and a deadline, or for a reply's two
    // ids of the flow, without growing.
    let mut token = String::with_capacity(160);
    token.push_str(SUBJECT_FIELDS);
    let id = message.id();
    if !push_uuid(&mut token, id) {
        push_token_safe(&mut token, ID, &id.to_string())?;
    }
    let millis = message.timestamp_millis();
    if id.v7_millis() != Some(millis) {
        push_number(&mut token, TIMESTAMP, millis);
    }
    if let Some(content_type) = message.content_type() {
        push_token_safe(&mut token, CONTENT_TYPE, content_type)?;
    }
    if let Some(deadline_ms) = deadline_ms {
        push_number(&mut token, DEADLINE_FIELD, deadline_ms);
    }
    for (name, value) in message.headers().iter() {
        if name == REPLY_STATUS && value == STATUS_OK {
            continue;
        }
        let (_, field) = PACKED.iter().find(|(header, _)| *header == name)?;
        push_token_safe(&mut token, field, value)?;
    }
    Some(token)
}

/// The fields of the last token of `subject`, when it is courier's.
fn subject_token(subject: &str) -> Option<&str> {
    subject
        .rsplit('.')
        .next()
        .and_then(|last| last.strip_prefix(SUBJECT_FIELDS))
}

/// Appends the field `name=value;` to a subject token, or `None` when the
/// value cannot be part of one: NATS cuts subjects at `.` and white space
/// and reads `*` and `>` as wildcards; `;` and `%` would need the header's
/// escapes, and anything beyond printable ASCII is left to the header too.
fn push_token_safe(token: &mut String, name: &str, value: &str) -> Option<()> {
    let safe = value
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b';' | b'%' | b'*' | b'>'));
    if !safe {
        return None;
    }
    token.push_str(name);
    token.push('=');
    token.push_str(value);
    token.push(';');
    Some(())
}

/// The courier message a request or a reply received over core NATS
/// carries: packed in its [`FIELDS`] header, or, without one, in the last
/// token of `subject` (a request's reply subject, [`subject_fields`], or a
/// reply's own reply subject, [`reply_fields`]); with neither, it is read
/// as any NATS message.
///
/// # Errors
///
/// As [`decode`].
pub(crate) fn decode_with_subject(
    headers: Option<&HeaderMap>,
    subject: Option<&str>,
    payload: Bytes,
) -> Result<Message, HeaderError> {
    if fields_header(headers).is_none()
        && let Some(fields) = subject.and_then(subject_token)
    {
        return decode_fields(fields, headers, payload);
    }
    decode(headers, payload)
}

/// The value of the [`FIELDS`] header among `headers`.
fn fields_header(headers: Option<&HeaderMap>) -> Option<&async_nats::HeaderValue> {
    headers?
        .iter()
        .find(|(name, _)| <HeaderName as AsRef<str>>::as_ref(name) == FIELDS)
        .and_then(|(_, values)| values.first())
}

/// The courier message a request or a reply received over core NATS
/// carries: packed ([`FIELDS`]), or, without that header, as any NATS
/// message ([`crate::codec::decode`]).
///
/// # Errors
///
/// [`HeaderError`] when courier's own fields or reserved headers cannot be
/// read.
pub(crate) fn decode(headers: Option<&HeaderMap>, payload: Bytes) -> Result<Message, HeaderError> {
    match fields_header(headers) {
        Some(fields) => decode_fields(fields.as_str(), headers, payload),
        None => crate::codec::decode(headers, payload),
    }
}

/// The message of courier's `fields` (a [`FIELDS`] value, or the fields of
/// a reply subject's token), any other `headers` and `payload`.
fn decode_fields(
    fields: &str,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Result<Message, HeaderError> {
    let fields = Fields::read(fields);
    let id = match fields.id {
        Some(id) => MessageId::parse(&fields.unescape(id))?,
        None => MessageId::default(),
    };
    // The id and the time it travelled with: no id drawn, no clock read,
    // unless the message lacks them.
    let timestamp = match fields
        .timestamp
        .and_then(|ts| ts.parse::<u64>().ok())
        .or_else(|| id.v7_millis())
    {
        Some(millis) => UNIX_EPOCH + Duration::from_millis(millis),
        None => SystemTime::now(),
    };
    let mut message = adapter::received(id, timestamp, payload);
    if let Some(content_type) = fields.content_type {
        adapter::set_content_type(&mut message, &fields.unescape(content_type));
    }
    if let Some(key) = fields.key {
        adapter::set_key(&mut message, &fields.unescape(key));
    }
    for (&(header, _), value) in PACKED.iter().zip(fields.packed) {
        let Some(value) = value else {
            continue;
        };
        adapter::restore_header(
            adapter::headers_mut(&mut message),
            header,
            fields.unescape(value),
        )?;
    }
    for (name, values) in headers.into_iter().flat_map(HeaderMap::iter) {
        let name = <HeaderName as AsRef<str>>::as_ref(name);
        if name == FIELDS || name.starts_with("Nats-") {
            continue;
        }
        let Some(value) = values.first() else {
            continue;
        };
        let restored = adapter::restore_header(
            adapter::headers_mut(&mut message),
            name,
            unquote(value.as_str()),
        );
        match restored {
            Ok(()) => {}
            // A courier message whose own header breaks courier's rules is
            // corrupt; any other header courier cannot carry is left out,
            // as for every message ([`origin`]).
            Err(e) if origin::is_reserved(name) => return Err(e),
            Err(e) => origin::left_out(name, &e.to_string()),
        }
    }
    Ok(message)
}

/// The fields of a [`FIELDS`] value, read in one pass; values still
/// escaped. A field named twice keeps its last value, as the message's
/// own setters would; unknown fields are ignored.
struct Fields<'a> {
    id: Option<&'a str>,
    timestamp: Option<&'a str>,
    content_type: Option<&'a str>,
    key: Option<&'a str>,
    /// The values of [`PACKED`]'s reserved headers, in its order.
    packed: [Option<&'a str>; PACKED.len()],
    /// Whether any value may hold an escape: without a `%` in the whole
    /// value, none needs [`unescape`].
    escaped: bool,
    /// Whether a request's requester reads its reply's fields from the
    /// reply's reply subject ([`REPLY_FIELDS_FIELD`]).
    reply_fields: bool,
}

impl<'a> Fields<'a> {
    fn read(value: &'a str) -> Self {
        let mut fields = Fields {
            id: None,
            timestamp: None,
            content_type: None,
            key: None,
            packed: [None; PACKED.len()],
            escaped: value.as_bytes().contains(&b'%'),
            reply_fields: false,
        };
        // Cut by bytes: `;` and `=` are ASCII, so every cut is at a char
        // boundary, and a byte search costs a fraction of a char pattern's.
        let bytes = value.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            let end = memchr::memchr(b';', &bytes[start..]).map_or(bytes.len(), |at| start + at);
            let field = start..end;
            start = end + 1;
            let Some(equals) = memchr::memchr(b'=', &bytes[field.clone()]) else {
                continue;
            };
            let name = &value[field.start..field.start + equals];
            let value = &value[field.start + equals + 1..field.end];
            match name {
                ID => fields.id = Some(value),
                TIMESTAMP => fields.timestamp = Some(value),
                CONTENT_TYPE => fields.content_type = Some(value),
                KEY => fields.key = Some(value),
                REPLY_FIELDS_FIELD => fields.reply_fields = value == "1",
                _ => {
                    if let Some(at) = PACKED.iter().position(|(_, packed)| *packed == name) {
                        fields.packed[at] = Some(value);
                    }
                }
            }
        }
        fields
    }

    /// `value` (one of these fields) with its escapes undone.
    fn unescape(&self, value: &'a str) -> Cow<'a, str> {
        if self.escaped {
            unescape(value)
        } else {
            Cow::Borrowed(value)
        }
    }
}

/// Appends the field `name=value;`, escaping the value.
fn push(fields: &mut String, name: &str, value: &str) {
    fields.push_str(name);
    fields.push('=');
    // Bytes, not chars: the four are ASCII; looked for with vector
    // instructions (most values need no escape).
    if memchr::memchr2(b'%', b';', value.as_bytes()).is_some() || adapter::has_line_break(value) {
        for c in value.chars() {
            match c {
                '%' => fields.push_str("%25"),
                ';' => fields.push_str("%3B"),
                '\r' => fields.push_str("%0D"),
                '\n' => fields.push_str("%0A"),
                c => fields.push(c),
            }
        }
    } else {
        fields.push_str(value);
    }
    fields.push(';');
}

/// Appends the field `id=<uuid>;` when `id` is a UUID, which needs no
/// escaping and fits a subject token (written in place, no copy); whether
/// it was one.
fn push_uuid(fields: &mut String, id: &MessageId) -> bool {
    let Some(uuid) = id.as_uuid() else {
        return false;
    };
    fields.push_str(ID);
    fields.push('=');
    fields.push_str(uuid.hyphenated().encode_lower(&mut [0; 36]));
    fields.push(';');
    true
}

/// Appends the field `name=n;` (a number needs no escaping).
fn push_number(fields: &mut String, name: &str, n: u64) {
    fields.push_str(name);
    fields.push('=');
    fields.push_str(wire::decimal(n, &mut wire::Digits::default()));
    fields.push(';');
}

/// The value [`push`] escaped. A `%` not followed by one of its escapes is
/// kept as it is.
fn unescape(value: &str) -> Cow<'_, str> {
    if !value.contains('%') {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3);
        let decoded = match escape {
            Some("%25") => Some('%'),
            Some("%3B") => Some(';'),
            Some("%0D") => Some('\r'),
            Some("%0A") => Some('\n'),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[at + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_core::request::headers::{ERROR_KIND, ERROR_REASON, REQUEST_ID};

    fn round_trip(message: &Message) -> (HeaderMap, Message) {
        let headers = encode(message);
        let decoded = decode(Some(&headers), message.payload().clone()).expect("decodes");
        (headers, decoded)
    }

    fn names(headers: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = headers.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_request_travels_in_one_header_and_comes_back_whole() {
        let request = Message::from_json(&7)
            .unwrap()
            .with_correlation_id("flow; 100% \"odd\" ")
            .unwrap();
        let deadline_ms = 1_700_000_005_000;
        let headers = encode_request(&request, deadline_ms);
        assert_eq!(names(&headers), [FIELDS]);
        let fields = headers.get(FIELDS).unwrap().as_str();
        assert!(!fields.contains("ts="), "{fields}");
        let decoded = decode(Some(&headers), request.payload().clone()).expect("decodes");
        let mut expected = request;
        adapter::restore_header(
            adapter::headers_mut(&mut expected),
            DEADLINE,
            deadline_ms.to_string(),
        )
        .unwrap();
        assert_eq!(decoded, expected);
    }

    /// `message` as its responder reads it, `deadline_ms` added.
    fn with_deadline(mut message: Message, deadline_ms: u64) -> Message {
        adapter::restore_header(
            adapter::headers_mut(&mut message),
            DEADLINE,
            deadline_ms.to_string(),
        )
        .unwrap();
        message
    }

    #[test]
    fn a_plain_request_travels_in_its_reply_subject_and_comes_back_whole() {
        let request = Message::from_json(&7)
            .unwrap()
            .with_correlation_id("flow-1")
            .unwrap()
            .with_causation_id("0190b6b4-0000-7000-8000-000000000000")
            .unwrap();
        let deadline_ms = 1_700_000_005_000;
        let token = subject_fields(&request, deadline_ms).expect("fits a subject token");
        assert!(token.starts_with(SUBJECT_FIELDS), "{token}");
        assert!(!token.contains(['.', ' ', '*', '>']), "{token}");
        assert!(!token.contains("ts="), "{token}");
        let reply = format!("_INBOX.abc.7.{token}");
        let decoded = decode_with_subject(None, Some(&reply), request.payload().clone()).unwrap();
        assert_eq!(decoded, with_deadline(request.clone(), deadline_ms));

        // With the fields header, the header is what counts.
        let other = Message::new("other");
        let headers = encode_request(&other, 5);
        let decoded = decode_with_subject(Some(&headers), Some(&reply), other.payload().clone());
        assert_eq!(decoded.unwrap(), with_deadline(other, 5));
    }

    #[test]
    fn a_request_with_anything_a_subject_token_cannot_carry_keeps_the_header() {
        let base = Message::new("q");
        assert!(subject_fields(&base, 1).is_some());
        let refused = [
            base.clone().with_key("k"),
            base.clone().with_header("tenant", "acme").unwrap(),
            base.clone()
                .with_header("traceparent", "00-1-2-01")
                .unwrap(),
            base.clone().with_content_type("application/vnd.api+json"),
            base.clone().with_correlation_id("a.b").unwrap(),
            base.clone().with_correlation_id("50%").unwrap(),
            base.clone().with_correlation_id("a;b").unwrap(),
            base.clone().with_correlation_id("a b").unwrap(),
            base.clone().with_correlation_id("a*").unwrap(),
            base.clone().with_correlation_id(">").unwrap(),
            base.clone().with_correlation_id("\u{e9}").unwrap(),
            base.clone().with_id(MessageId::parse("order.7").unwrap()),
        ];
        for message in refused {
            assert_eq!(subject_fields(&message, 1), None, "{message:?}");
        }
        // A text id, a timestamp of its own and an empty field fit.
        let message = base
            .with_id(MessageId::parse("order-7").unwrap())
            .with_timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_234_567))
            .with_causation_id("")
            .unwrap();
        let token = subject_fields(&message, 9).unwrap();
        assert!(token.contains("ts=1234567;"), "{token}");
        let reply = format!("_INBOX.abc.7.{token}");
        let decoded = decode_with_subject(None, Some(&reply), message.payload().clone()).unwrap();
        assert_eq!(decoded, with_deadline(message, 9));
    }

    #[test]
    fn a_reply_subject_without_courier_fields_is_a_plain_request() {
        for reply in [
            None,
            Some("_INBOX.abc"),
            Some("_INBOX.abc.def"),
            Some("x.id=1;"),
        ] {
            let plain = decode_with_subject(None, reply, Bytes::from_static(b"x")).unwrap();
            assert_eq!(plain.payload().as_ref(), b"x");
            assert_eq!(plain.header(DEADLINE), None, "{reply:?}");
            assert!(!plain.id().to_string().contains("id="), "{reply:?}");
        }
    }

    #[test]
    fn a_reply_to_a_request_that_asks_travels_in_its_own_reply_subject() {
        let asked = Message::from_json(&7).unwrap();
        let token = subject_fields(&asked, 1_700_000_005_000).unwrap();
        assert!(token.ends_with(";rf=1;"), "{token}");
        let subject = format!("_INBOX.abc.7.{token}");
        let request = decode_with_subject(None, Some(&subject), asked.payload().clone()).unwrap();
        let reply =
            courier_core::request::headers::success(&request, Message::from_json(&8).unwrap());
        let fields = reply_fields(&subject, &reply).expect("fits its reply subject");
        assert!(fields.starts_with(SUBJECT_FIELDS), "{fields}");
        assert!(!fields.contains(['.', ' ', '*', '>']), "{fields}");
        for field in ["ct=application/json;", "corr=", "cause="] {
            assert!(fields.contains(field), "{field} in {fields}");
        }
        let decoded = decode_with_subject(None, Some(&fields), reply.payload().clone()).unwrap();
        assert_eq!(decoded, reply);
        assert_eq!(decoded.causation_id(), Some(&*request.id().to_string()));
        assert!(courier_core::request::headers::outcome(decoded).is_ok());

        // A header, when there is one, is what counts.
        let headers = encode(&Message::new("other"));
        let decoded = decode_with_subject(Some(&headers), Some(&fields), Bytes::new()).unwrap();
        assert_ne!(decoded.id(), reply.id());
    }

    #[test]
    fn a_reply_keeps_the_header_unless_its_request_asked_and_it_fits() {
        let asked = "_INBOX.abc.7.courier:id=q;dl=5;rf=1;";
        let request = decode_with_subject(None, Some(asked), Bytes::new()).unwrap();
        let reply = |message: Message| courier_core::request::headers::success(&request, message);
        assert!(reply_fields(asked, &reply(Message::new("a"))).is_some());
        // Requesters that did not ask: an older courier's token, a header
        // request's subject, a plain client's inbox.
        for subject in [
            "_INBOX.abc.7.courier:id=q;dl=5;",
            "_INBOX.abc.7.courier:id=q;dl=5;rf=0;",
            "_INBOX.abc.7",
            "_INBOX.abc",
        ] {
            assert_eq!(
                reply_fields(subject, &reply(Message::new("a"))),
                None,
                "{subject}"
            );
        }
        // Replies with anything a token cannot carry, and error replies.
        let failure = courier_core::request::headers::failure(
            &request,
            courier_core::request::RemoteErrorKind::Transient,
            "busy",
        );
        let refused = [
            failure,
            reply(Message::new("a").with_key("k")),
            reply(Message::new("a").with_header("tenant", "acme").unwrap()),
            reply(Message::new("a").with_content_type("text/plain; charset=utf-8")),
            // The reply to a request that carried its id in a header (one
            // stored in JetStream) carries it back in one.
            courier_core::request::headers::success(
                &courier_core::request::headers::prepare(
                    Message::new("q"),
                    asked,
                    Duration::from_secs(1),
                )
                .1,
                Message::new("a"),
            ),
        ];
        for message in refused {
            assert_eq!(reply_fields(asked, &message), None, "{message:?}");
        }
    }

    #[test]
    fn every_field_round_trips() {
        let message = Message::new("p")
            .with_id(MessageId::parse("not;a%uuid\u{e9}").unwrap())
            .with_timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_234_567))
            .with_key("k;ey ")
            .with_content_type(" text/plain ")
            .with_causation_id("")
            .unwrap()
            .with_header("tenant", " acme ")
            .unwrap()
            .with_header("empty", "")
            .unwrap();
        let (headers, decoded) = round_trip(&message);
        assert_eq!(names(&headers), ["courier-fields", "empty", "tenant"]);
        assert_eq!(decoded, message);
    }

    #[test]
    fn a_successful_reply_carries_no_status_and_an_error_reply_its_failure() {
        let (_, request) = courier_core::request::headers::prepare(
            Message::new("q"),
            "inbox",
            Duration::from_secs(1),
        );
        let reply = courier_core::request::headers::success(&request, Message::new("a"));
        let (headers, decoded) = round_trip(&reply);
        assert_eq!(names(&headers), [FIELDS, REQUEST_ID]);
        assert_eq!(decoded.header(REPLY_STATUS), None);
        assert_eq!(decoded.causation_id(), reply.causation_id());
        assert!(courier_core::request::headers::outcome(decoded).is_ok());

        let failure = courier_core::request::headers::failure(
            &request,
            courier_core::request::RemoteErrorKind::Permanent,
            "out; of 100% stock",
        );
        let (headers, decoded) = round_trip(&failure);
        assert_eq!(
            names(&headers),
            [ERROR_KIND, ERROR_REASON, FIELDS, REPLY_STATUS, REQUEST_ID]
        );
        match courier_core::request::headers::outcome(decoded) {
            Err(courier_core::request::RequestError::Remote { kind, message }) => {
                assert_eq!(kind, courier_core::request::RemoteErrorKind::Permanent);
                assert_eq!(message, "out; of 100% stock");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_message_without_the_fields_header_is_read_as_any_nats_message() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "0190b6b4-0000-7000-8000-000000000000");
        headers.insert("courier-timestamp-ms", "1700000000000");
        headers.insert("courier-correlation-id", "flow");
        headers.insert("courier-reply-status", "ok");
        let decoded = decode(Some(&headers), Bytes::new()).unwrap();
        assert_eq!(decoded.correlation_id(), Some("flow"));
        assert_eq!(decoded.timestamp_millis(), 1_700_000_000_000);
        assert!(courier_core::request::headers::outcome(decoded).is_ok());
        let plain = decode(None, Bytes::from_static(b"x")).unwrap();
        assert_eq!(plain.payload().as_ref(), b"x");
    }

    #[test]
    fn a_broken_reserved_header_makes_the_message_undecodable() {
        let mut headers = encode(&Message::new("x"));
        headers.insert("oversized", "x".repeat(70_000));
        let decoded = decode(Some(&headers), Bytes::new()).expect("a user header is left out");
        assert_eq!(decoded.headers().len(), 0);
        headers.insert("courier-oversized", "x".repeat(70_000));
        assert!(matches!(
            decode(Some(&headers), Bytes::new()),
            Err(HeaderError::TooLarge { .. })
        ));
    }

    #[test]
    fn fields_are_read_in_any_order_and_odd_ones_are_skipped() {
        let fields = Fields::read("bare;ct=a=b;;key=k\u{e9}y;unknown=1;corr=c;key=last;id=i");
        assert_eq!(fields.content_type, Some("a=b"));
        assert_eq!(fields.key, Some("last"));
        assert_eq!(fields.id, Some("i"));
        assert_eq!(fields.timestamp, None);
        assert_eq!(fields.packed, [None, Some("c"), None]);
        assert_eq!(PACKED[1].0, CORRELATION_ID);
        assert!(!fields.escaped);
        assert!(!fields.reply_fields);
        assert!(Fields::read("id=i;rf=1;").reply_fields);
        let empty = Fields::read("");
        assert_eq!((empty.id, empty.key), (None, None));
        let escaped = Fields::read("id=%3B;");
        assert_eq!(escaped.unescape(escaped.id.unwrap()), ";");
    }

    #[test]
    fn escapes_round_trip_and_stray_percent_signs_are_kept() {
        for value in ["", "%", "%2", "%25", "a;b", "\r\n", "100%;%3B", "ü;%"] {
            let mut fields = String::new();
            push(&mut fields, "x", value);
            let inner = fields
                .strip_prefix("x=")
                .and_then(|f| f.strip_suffix(';'))
                .unwrap();
            assert!(!inner.contains([';', '\r', '\n']), "{inner:?}");
            assert_eq!(unescape(inner), value, "{value:?}");
        }
        assert_eq!(unescape("50%"), "50%");
    }
}
