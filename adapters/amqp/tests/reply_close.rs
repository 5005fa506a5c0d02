//! Closing a connection whose direct reply-to channel is open: `close`
//! returns `Ok` (the reply reader is one of the connection's tasks and
//! stops with it), and a request still waiting for its reply ends at once
//! with the reply path closed instead of waiting out its timeout.

mod common;

use std::time::{Duration, Instant};

use courier_amqp::AmqpBroker;
use courier_core::request::RequestError;
use courier_core::{Error, Message, Subscription};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_an_open_reply_channel_is_ok_and_ends_waiting_requests() {
    let fixture = common::shared().await;
    let broker = AmqpBroker::connect(fixture.url())
        .await
        .expect("connect")
        .into_broker();
    // A group without a running responder: the request is stored and
    // waits for a reply that never comes.
    let sub = Subscription::new(common::name("ask"), common::name("responders"));
    broker.provision(&sub).await.expect("provision");

    let waiting = {
        let (broker, topic) = (broker.clone(), sub.topic().to_owned());
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = broker
                .request(&topic, Message::new("unanswered"), Duration::from_secs(60))
                .await;
            (outcome, started.elapsed())
        })
    };
    // The request is out (the reply channel open) once the broker has
    // the request in its queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag = broker.lag(sub.topic(), sub.group()).await.expect("lag");
        if lag.total >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the request never reached its queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let started = Instant::now();
    let closed = broker.close().await;
    let took = started.elapsed();
    let (outcome, waited) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting request returns after close")
        .expect("request task");
    eprintln!(
        "close took {took:.2?}: {closed:?}; the waiting request returned after {waited:.2?}: {outcome:?}"
    );
    closed.expect("close with an open reply channel");
    match outcome {
        Err(RequestError::Transport(Error::Closed(_))) => {}
        other => panic!("expected the reply path closed, got {other:?}"),
    }
}
