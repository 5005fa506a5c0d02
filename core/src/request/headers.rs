//! The reserved headers a request and its reply travel with, and the
//! functions that set and read them (for adapters and the responder).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::{RemoteErrorKind, RequestError};
use crate::adapter::wire::{Digits, decimal};
use crate::message::{Message, MessageId};

/// The id of one request, copied into its reply: replies are matched on it,
/// never on the correlation id (which a whole flow shares).
pub const REQUEST_ID: &str = "courier-request-id";
/// Where the reply goes: an address only the requester's adapter
/// understands (a NATS inbox, a RabbitMQ direct reply-to channel, a Kafka
/// reply topic, an in-process inbox).
pub const REPLY_TO: &str = "courier-reply-to";
/// When the requester stops waiting, in milliseconds since the Unix epoch.
/// A responder does not process a request whose deadline has passed.
pub const DEADLINE: &str = "courier-deadline-ms";
/// `error` on an error reply. A successful reply carries none (earlier
/// versions wrote `ok`, which is still read as a success: any value but
/// `error` is).
pub const REPLY_STATUS: &str = "courier-reply-status";
/// The [`RemoteErrorKind`] of an error reply.
pub const ERROR_KIND: &str = "courier-error-kind";
/// The reason of an error reply.
pub const ERROR_REASON: &str = "courier-error-reason";

const STATUS_ERROR: &str = "error";
/// Longest reason an error reply carries, in bytes.
const MAX_REASON: usize = 4096;

/// `message` made into a request answered at `reply_to` within `timeout`:
/// a fresh request id, the reply address and the deadline, returned with
/// the id. Headers of an earlier request (a message sent twice) are
/// replaced.
pub fn prepare(mut message: Message, reply_to: &str, timeout: Duration) -> (String, Message) {
    // The id and the deadline as text without the formatting machinery,
    // and the constant names inserted without a lookup among the reserved
    // ones: every request goes through here.
    let mut buf = [0; 36];
    let id = MessageId::new().as_text(&mut buf).to_owned();
    let mut digits = Digits::default();
    let deadline = decimal(deadline_millis(timeout), &mut digits);
    let headers = message.headers_mut();
    for (name, value) in [
        (REQUEST_ID, id.clone()),
        (REPLY_TO, reply_to.to_owned()),
        (DEADLINE, deadline.to_owned()),
    ] {
        // Values short and single-line: cannot fail, unless the message's
        // headers are already at the size limit, in which case the broker
        // refuses it anyway.
        let _ = headers.insert_own(name, value);
    }
    (id, message)
}

/// The deadline of a request sent now with `timeout`, in milliseconds
/// since the Unix epoch (the value of [`DEADLINE`]); saturates.
pub(crate) fn deadline_millis(timeout: Duration) -> u64 {
    let deadline = crate::deadline::system_deadline_after(SystemTime::now(), timeout);
    deadline
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The address the requester waits at, if `message` is a request.
pub fn reply_address(message: &Message) -> Option<&str> {
    message.header(REPLY_TO)
}

/// The address to send the reply to `request` to, for adapters'
/// [`Requester::reply`](super::Requester::reply).
///
/// # Errors
///
/// [`Error::Unsupported`](crate::Error::Unsupported) naming `broker` when
/// `request` has no reply address: it was published, not requested.
pub fn reply_address_of<'a>(broker: &'static str, request: &'a Message) -> crate::Result<&'a str> {
    reply_address(request).ok_or(crate::Error::Unsupported {
        broker,
        feature: "replying to a message that was not sent as a request",
    })
}

/// Whether `message` is a request whose requester has stopped waiting.
pub fn deadline_passed(message: &Message) -> bool {
    let Some(deadline) = message.header(DEADLINE).and_then(|v| v.parse::<u64>().ok()) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    now > u128::from(deadline)
}

/// `reply` made into the successful reply to `request`: it carries the
/// request id, and it is caused by the request (same correlation id; the
/// causation id is the request's id).
pub fn success(request: &Message, reply: Message) -> Message {
    mark(request, reply.caused_by(request), None)
}

/// The error reply to `request`: an empty payload with the failure's kind
/// and reason (cut to 4 KiB, on one line).
pub fn failure(request: &Message, kind: RemoteErrorKind, reason: &str) -> Message {
    let mut reply = mark(
        request,
        Message::new("").caused_by(request),
        Some(STATUS_ERROR),
    );
    let mut reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    let headers = reply.headers_mut();
    let _ = headers.insert_own(ERROR_KIND, kind.as_str());
    let _ = headers.insert_own(ERROR_REASON, reason);
    reply
}

fn mark(request: &Message, mut reply: Message, status: Option<&str>) -> Message {
    let headers = reply.headers_mut();
    if let Some(id) = request.header(REQUEST_ID) {
        let _ = headers.insert_own(REQUEST_ID, id);
    }
    if let Some(status) = status {
        let _ = headers.insert_own(REPLY_STATUS, status);
    }
    reply
}

/// What the requester makes of a reply: the reply itself, or the remote
/// error an error reply carries. The request/reply headers are removed from
/// a successful reply.
///
/// # Errors
///
/// [`RequestError::Remote`] for an error reply.
pub fn outcome(mut reply: Message) -> Result<Message, RequestError> {
    if reply.header(REPLY_STATUS) == Some(STATUS_ERROR) {
        return Err(RequestError::Remote {
            kind: RemoteErrorKind::parse(reply.header(ERROR_KIND).unwrap_or_default()),
            message: reply.header(ERROR_REASON).unwrap_or_default().to_owned(),
        });
    }
    reply
        .headers_mut()
        .remove_all(&[REQUEST_ID, REPLY_STATUS, REPLY_TO, DEADLINE]);
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_carries_the_request_id_and_the_flow() {
        let flow = Message::new("q").with_correlation_id("flow-1").unwrap();
        let (id, request) = prepare(flow, "inbox.1", Duration::from_secs(5));
        assert_eq!(request.header(REQUEST_ID), Some(id.as_str()));
        assert_eq!(reply_address(&request), Some("inbox.1"));
        assert!(!deadline_passed(&request));
        let reply = success(&request, Message::new("a"));
        assert_eq!(reply.header(REQUEST_ID), Some(id.as_str()));
        assert_eq!(reply.correlation_id(), Some("flow-1"));
        assert_eq!(
            reply.causation_id(),
            Some(request.id().to_string().as_str())
        );
        let reply = outcome(reply).unwrap();
        assert_eq!(reply.header(REQUEST_ID), None);
        assert_eq!(reply.payload().as_ref(), b"a");
    }

    #[test]
    fn an_error_reply_becomes_a_remote_error() {
        let (_, request) = prepare(Message::new("q"), "inbox", Duration::from_secs(1));
        let reply = failure(
            &request,
            RemoteErrorKind::Permanent,
            "out of stock\nfor sku 7",
        );
        match outcome(reply) {
            Err(RequestError::Remote { kind, message }) => {
                assert_eq!(kind, RemoteErrorKind::Permanent);
                assert_eq!(message, "out of stock for sku 7");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_passed_deadline_is_seen() {
        let (_, request) = prepare(Message::new("q"), "inbox", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert!(deadline_passed(&request));
    }

    #[test]
    fn an_endless_timeout_is_a_far_deadline_not_a_panic() {
        let (_, request) = prepare(Message::new("q"), "inbox", Duration::MAX);
        assert!(!deadline_passed(&request));
    }
}
