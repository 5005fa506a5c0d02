//! A JetStream stream for a dead-letter topic that holds one message and
//! refuses more: a dead-letter target that refuses until it is purged.

use async_nats::jetstream::{self, stream};
use courier_nats::stream_name;

/// Creates the stream of `topic` with room for one message and fills it.
pub(crate) async fn full_stream(js: &jetstream::Context, topic: &str) -> stream::Stream {
    let full = js
        .create_stream(stream::Config {
            name: stream_name(topic),
            subjects: vec![topic.to_owned()],
            max_messages: 1,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .expect("create the dead-letter stream");
    js.publish(topic.to_owned(), "filler".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    full
}
