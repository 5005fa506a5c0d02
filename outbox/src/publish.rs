//! Publishing one claim's rows, keeping per-key order and setting apart
//! the rows a broker refuses for good.

use courier_core::Publisher;
use courier_core::error::chain;

use crate::row::Row;
use crate::store::Outcome;

/// Publishes `rows` (in enqueue order) through `publisher`: one pipelined
/// batch per topic, topics in the order they first appear.
///
/// A retryable failure stops the round: the rows of that batch and of every
/// later one stay unsent, so nothing overtakes them. A batch refused for
/// good is published again one message at a time, to tell the refused rows
/// (failed, with the reason) from the rest.
pub(crate) async fn publish_rows(publisher: &dyn Publisher, rows: &[Row]) -> Outcome {
    let mut outcome = Outcome::default();
    for (topic, group) in by_topic(rows) {
        if outcome.error.is_some() {
            outcome.unsent.extend(group.iter().map(|r| r.seq));
            continue;
        }
        let messages = group.iter().map(|r| r.message.clone()).collect();
        match publisher.publish_batch(topic, messages).await {
            Ok(()) => outcome.sent.extend(group.iter().map(|r| r.seq)),
            Err(e) if e.is_retryable() => {
                outcome.error = Some(chain(&e));
                outcome.unsent.extend(group.iter().map(|r| r.seq));
            }
            Err(_) => publish_one_by_one(publisher, topic, &group, &mut outcome).await,
        }
    }
    outcome
}

async fn publish_one_by_one(
    publisher: &dyn Publisher,
    topic: &str,
    group: &[&Row],
    outcome: &mut Outcome,
) {
    for row in group {
        if outcome.error.is_some() {
            outcome.unsent.push(row.seq);
            continue;
        }
        match publisher.publish(topic, row.message.clone()).await {
            Ok(()) => outcome.sent.push(row.seq),
            Err(e) if e.is_retryable() => {
                outcome.error = Some(chain(&e));
                outcome.unsent.push(row.seq);
            }
            Err(e) => outcome.failed.push((row.seq, chain(&e))),
        }
    }
}

/// The rows grouped by topic, groups in order of first appearance, rows in
/// their order.
fn by_topic(rows: &[Row]) -> Vec<(&str, Vec<&Row>)> {
    let mut groups: Vec<(&str, Vec<&Row>)> = Vec::new();
    for row in rows {
        match groups.iter_mut().find(|(topic, _)| *topic == row.topic) {
            Some((_, group)) => group.push(row),
            None => groups.push((&row.topic, vec![row])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use courier_core::{Message, Subscriber, Subscription};
    use courier_memory::{MemoryBroker, MemoryConfig};

    use super::*;

    fn row(seq: i64, topic: &str, payload: &'static str) -> Row {
        Row {
            seq,
            topic: topic.to_owned(),
            message: Message::new(payload),
        }
    }

    #[tokio::test]
    async fn refused_rows_are_set_apart_and_the_rest_go_out() {
        let broker = MemoryBroker::with_config(MemoryConfig::default().max_payload(4));
        for topic in ["a", "b"] {
            broker
                .provision(&Subscription::new(topic, "g"))
                .await
                .unwrap();
        }
        let rows = [
            row(1, "a", "ok"),
            row(2, "b", "ok"),
            row(3, "a", "too large"),
            row(4, "a", "ok"),
            row(5, "bad topic", "ok"),
        ];
        let outcome = publish_rows(&broker, &rows).await;
        assert_eq!(outcome.sent, [1, 4, 2]);
        let failed: Vec<i64> = outcome.failed.iter().map(|(s, _)| *s).collect();
        assert_eq!(failed, [3, 5]);
        assert!(
            outcome.failed[0].1.contains("larger than the limit"),
            "{:?}",
            outcome.failed
        );
        assert!(outcome.unsent.is_empty() && outcome.error.is_none());
    }
}
