//! Requests whose reply address carries the request id (NATS: the reply
//! subject `<inbox>.<id>`): nothing of the exchange is written into the
//! request's headers; the adapter sends the id and the deadline its own way.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::error::RequestError;
use super::headers;
use super::pending::{Answer, PendingReplies};
use crate::error::Error;
use crate::message::Message;

/// What an adapter sends with one request of [`exchange_addressed`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ticket {
    /// The request's id ([`PendingReplies::next_id`]): its reply is matched
    /// on it, so the reply address must carry it back.
    pub id: String,
    /// When the requester stops waiting, in milliseconds since the Unix
    /// epoch: what [`headers::DEADLINE`] would hold. A responder must not
    /// process the request past it.
    pub deadline_ms: u64,
}

/// [`exchange`](super::exchange) for adapters whose reply address carries
/// the request id: `message` gets no request id, reply address or deadline
/// header; `send` gets them in a [`Ticket`] next to the message. The reply
/// the adapter hands to [`PendingReplies::deliver_to`] (with the id its
/// address carried) ends the exchange; the whole of it is bounded by
/// `timeout`.
///
/// # Errors
///
/// As [`Requester::request`](super::Requester::request); `send`'s own
/// errors are passed through.
///
/// # Cancel safety
///
/// Dropping the future unregisters the request.
pub async fn exchange_addressed<F, Fut>(
    pending: &Arc<PendingReplies>,
    topic: &str,
    message: Message,
    timeout: Duration,
    send: F,
) -> Result<Message, RequestError>
where
    F: FnOnce(Ticket, Message) -> Fut,
    Fut: Future<Output = Result<(), RequestError>>,
{
    let started = Instant::now();
    let ticket = Ticket {
        id: pending.next_id(),
        deadline_ms: headers::deadline_millis(timeout),
    };
    let id = ticket.id.clone();
    let send = move |request| send(ticket, request);
    wait_for_reply(pending, topic, &id, message, timeout, started, send).await
}

/// Registers request `id` in `pending`, sends `request` with `send` and
/// waits for its answer, all within `timeout` from `started`; the reply is
/// made into the request's outcome ([`headers::outcome`]). The answer ends
/// the wait even while `send` is still waiting (for a broker's confirm);
/// an error of `send` that comes first ends it with that error.
pub(super) async fn wait_for_reply<F, Fut>(
    pending: &Arc<PendingReplies>,
    topic: &str,
    id: &str,
    mut request: Message,
    timeout: Duration,
    started: Instant,
    send: F,
) -> Result<Message, RequestError>
where
    F: FnOnce(Message) -> Fut,
    Fut: Future<Output = Result<(), RequestError>>,
{
    let span = crate::telemetry::request_span(topic, &mut request);
    let waiting = pending.register(id);
    let work = async move {
        let answer = waiting.reply();
        let sent = send(request);
        tokio::pin!(answer, sent);
        // A broker may confirm a request after the reply it caused is back
        // (RabbitMQ confirms a persistent message once it is on disk; the
        // responder has had it since it was routed): the reply ends the
        // exchange, and what `send` still waits for is dropped. Only when
        // `send` ends first does its outcome count.
        let answer = tokio::select! {
            biased;
            answer = &mut answer => answer,
            sent = &mut sent => {
                sent?;
                answer.await
            }
        };
        match answer {
            Some(Answer::Reply(reply)) => Ok(reply),
            Some(Answer::NoResponders) => Err(RequestError::NoResponders {
                topic: topic.to_owned(),
            }),
            None => Err(RequestError::Transport(Error::Closed("reply path"))),
        }
    };
    match tokio::time::timeout(timeout, work).instrument(span).await {
        Ok(Ok(reply)) => headers::outcome(reply),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RequestError::Timeout {
            elapsed: started.elapsed(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::request::headers::{DEADLINE, REPLY_TO, REQUEST_ID};

    #[tokio::test]
    async fn the_ticket_carries_id_and_deadline_and_the_headers_stay_clean() {
        let pending = PendingReplies::new();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut tickets = Vec::new();
        for question in ["q1", "q2"] {
            let feed = pending.clone();
            let mut seen = None;
            let reply = exchange_addressed(
                &pending,
                "t",
                Message::new(question),
                Duration::from_secs(5),
                |ticket, request| {
                    for name in [REQUEST_ID, REPLY_TO, DEADLINE] {
                        assert_eq!(request.header(name), None, "{name}");
                    }
                    seen = Some(ticket.clone());
                    let answer = format!("a{}", &question[1..]);
                    async move {
                        assert!(feed.deliver_to(&ticket.id, Message::new(answer)));
                        Ok(())
                    }
                },
            )
            .await
            .expect("a reply");
            assert_eq!(
                reply.payload().as_ref(),
                format!("a{}", &question[1..]).as_bytes()
            );
            tickets.push(seen.expect("sent"));
        }
        assert_ne!(tickets[0].id, tickets[1].id, "every request has its own id");
        for ticket in &tickets {
            assert!(
                (now_ms + 4_000..now_ms + 60_000).contains(&ticket.deadline_ms),
                "{ticket:?}"
            );
        }
        // A reply to a finished request is late, never another's answer.
        assert!(!pending.deliver_to(&tickets[0].id, Message::new("again")));
        assert_eq!((pending.late(), pending.in_flight()), (1, 0));
    }

    #[tokio::test]
    async fn the_reply_ends_the_exchange_while_the_send_still_waits_for_its_confirm() {
        let pending = PendingReplies::new();
        let feed = pending.clone();
        let reply = exchange_addressed(
            &pending,
            "t",
            Message::new("q"),
            Duration::from_secs(30),
            |ticket, _request| async move {
                // The request is out and answered; its broker confirm never
                // comes within the test.
                assert!(feed.deliver_to(&ticket.id, Message::new("a")));
                std::future::pending::<()>().await;
                Ok(())
            },
        );
        let reply = tokio::time::timeout(Duration::from_secs(10), reply)
            .await
            .expect("answered before the confirm")
            .expect("a reply");
        assert_eq!(reply.payload().as_ref(), b"a");
        assert_eq!(pending.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_send_error_before_any_answer_ends_the_exchange_with_it() {
        let pending = PendingReplies::new();
        let outcome = exchange_addressed(
            &pending,
            "t",
            Message::new("q"),
            Duration::from_secs(30),
            |_ticket, _request| async {
                Err(RequestError::NoResponders {
                    topic: "t".to_owned(),
                })
            },
        )
        .await;
        assert!(
            matches!(outcome, Err(RequestError::NoResponders { ref topic }) if topic == "t"),
            "{outcome:?}"
        );
        assert_eq!(pending.in_flight(), 0);
    }
}
