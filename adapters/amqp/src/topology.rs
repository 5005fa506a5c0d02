//! Names and declarations of exchanges and queues.
//!
//! - topic `t` → durable fanout exchange `<exchange_prefix>t`;
//! - group `g` of topic `t` → durable queue `<queue_prefix>t.g` (quorum or
//!   classic, see [`QueueType`]) bound to the topic's exchange;
//! - delayed requeue of group `g` → durable classic queues
//!   `<queue>.retry.<ms>ms`, one per delay bucket, whose messages expire
//!   after that many milliseconds and are dead-lettered through the default
//!   exchange straight back to the group's queue. Unused bucket queues
//!   delete themselves ([`RETRY_QUEUE_IDLE`] after their last use).
//!
//! A name longer than the 255 bytes AMQP allows is cut and given a hash of
//! the whole name, so distinct long names stay distinct.

use std::time::Duration;

use courier_core::delivery::default_dead_letter_topic;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::{AmqpConfig, QueueNaming, QueueType};
use crate::error::AmqpError;

/// The longest AMQP exchange or queue name, in bytes.
const MAX_NAME: usize = 255;

/// How long an unused retry queue lives after its messages expired.
pub(crate) const RETRY_QUEUE_IDLE: Duration = Duration::from_secs(30 * 60);

/// The shortest retry bucket, in milliseconds.
const FIRST_BUCKET_MS: f64 = 10.0;

/// Ratio between neighbouring buckets: a delayed message waits at most
/// 19 % longer than asked.
const BUCKET_RATIO: f64 = 1.189_207_115_002_721; // 2^(1/4)

/// The longest per-queue message TTL RabbitMQ accepts (2^32 - 1 ms).
const MAX_TTL_MS: u64 = u32::MAX as u64;

/// The exchange of a topic.
pub(crate) fn exchange_name(config: &AmqpConfig, topic: &str) -> String {
    fit(format!("{}{topic}", config.exchange_prefix))
}

/// The queue of a consumer group (see [`QueueNaming`]).
pub(crate) fn queue_name(config: &AmqpConfig, topic: &str, group: &str) -> String {
    let separator = match config.queue_naming {
        QueueNaming::Separated => ':',
        QueueNaming::Dotted => '.',
    };
    fit(format!("{}{topic}{separator}{group}", config.queue_prefix))
}

/// The retry queue of a group's queue for one delay bucket. Its two `:`
/// keep it apart from every group queue, which has one.
pub(crate) fn retry_queue_name(queue: &str, bucket_ms: u64) -> String {
    fit(format!("{queue}:retry:{bucket_ms}ms"))
}

/// The delay bucket for `delay`, in milliseconds: the smallest of 10 ms,
/// 10 ms × 2^(1/4), 10 ms × 2^(2/4), ... that is at least `delay`.
///
/// # Errors
///
/// [`AmqpError::DelayTooLong`] beyond RabbitMQ's longest TTL (about 49 days).
pub(crate) fn retry_bucket(delay: Duration) -> Result<u64, AmqpError> {
    let limit = Duration::from_millis(MAX_TTL_MS);
    if delay > limit {
        return Err(AmqpError::DelayTooLong { delay, limit });
    }
    let wanted = delay.as_secs_f64() * 1000.0;
    let mut bucket = FIRST_BUCKET_MS;
    while bucket < wanted {
        bucket *= BUCKET_RATIO;
    }
    let ms = (bucket.ceil() as u64).max(delay.as_millis().try_into().unwrap_or(u64::MAX));
    Ok(ms.min(MAX_TTL_MS))
}

/// `name`, or when too long its first bytes followed by `~` and a hash of
/// the whole name.
fn fit(name: String) -> String {
    if name.len() <= MAX_NAME {
        return name;
    }
    let hash = format!("~{:016x}", fnv1a(name.as_bytes()));
    let mut cut = MAX_NAME - hash.len();
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{hash}", &name[..cut])
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn short(name: &str) -> ShortString {
    // Every name passed here went through `fit`.
    ShortString::try_new(name).unwrap_or_else(|_| ShortString::from(fit(name.to_owned())))
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Declares a topic's durable fanout exchange.
pub(crate) async fn declare_exchange(channel: &Channel, exchange: &str) -> lapin::Result<()> {
    channel
        .exchange_declare(
            short(exchange),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The exchange a group queue of `topic` hands the messages the broker
/// gives up on to (a quorum queue's delivery limit: RabbitMQ 4 sets 20
/// unless configured): the exchange of the topic's default dead-letter
/// topic. `None` for classic queues, which have no delivery limit.
pub(crate) fn dead_letter_exchange(config: &AmqpConfig, topic: &str) -> Option<String> {
    (config.queue_type == QueueType::Quorum)
        .then(|| exchange_name(config, &default_dead_letter_topic(topic)))
}

/// Declares a group's durable queue and binds it to the topic's exchange
/// (which must exist, as must `dead_letters`, the queue's dead-letter
/// exchange, see [`dead_letter_exchange`]).
pub(crate) async fn declare_group_queue(
    channel: &Channel,
    config: &AmqpConfig,
    exchange: &str,
    queue: &str,
    dead_letters: Option<&str>,
) -> lapin::Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), text(config.queue_type.as_str()));
    if let Some(dead_letters) = dead_letters {
        arguments.insert("x-dead-letter-exchange".into(), text(dead_letters));
    }
    if config.single_active_consumer {
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    channel
        .queue_declare(
            short(queue),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    channel
        .queue_bind(
            short(queue),
            short(exchange),
            ShortString::from(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Declares (and so keeps alive) the retry queue of `target` for `bucket_ms`.
pub(crate) async fn declare_retry_queue(
    channel: &Channel,
    retry_queue: &str,
    bucket_ms: u64,
    target: &str,
) -> lapin::Result<()> {
    let idle = RETRY_QUEUE_IDLE.as_millis() as u64;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), text(QueueType::Classic.as_str()));
    arguments.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(bucket_ms as i64),
    );
    arguments.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(bucket_ms.saturating_add(idle).min(MAX_TTL_MS) as i64),
    );
    arguments.insert("x-dead-letter-exchange".into(), text(""));
    arguments.insert("x-dead-letter-routing-key".into(), text(target));
    channel
        .queue_declare(
            short(retry_queue),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_follow_topic_and_group() {
        let config = AmqpConfig::default();
        assert_eq!(exchange_name(&config, "orders"), "orders");
        assert_eq!(queue_name(&config, "orders", "billing"), "orders:billing");
        let config = AmqpConfig::default()
            .exchange_prefix("x.")
            .queue_prefix("q.");
        assert_eq!(exchange_name(&config, "orders"), "x.orders");
        assert_eq!(queue_name(&config, "orders", "billing"), "q.orders:billing");
        assert_eq!(
            retry_queue_name("orders:billing", 200),
            "orders:billing:retry:200ms"
        );
        let dotted = AmqpConfig::default().queue_naming(QueueNaming::Dotted);
        assert_eq!(queue_name(&dotted, "orders", "billing"), "orders.billing");
    }

    #[test]
    fn look_alike_topics_and_groups_get_queues_of_their_own() {
        let config = AmqpConfig::default();
        let pairs = [
            ("orders.eu", "billing"),
            ("orders", "eu.billing"),
            ("orders", "billing.retry.200ms"),
        ];
        let names: std::collections::HashSet<String> = pairs
            .iter()
            .map(|(topic, group)| queue_name(&config, topic, group))
            .chain(std::iter::once(retry_queue_name(
                &queue_name(&config, "orders", "billing"),
                200,
            )))
            .collect();
        assert_eq!(names.len(), pairs.len() + 1, "{names:?}");
        // The dotted naming of earlier versions merges the first two.
        let dotted = AmqpConfig::default().queue_naming(QueueNaming::Dotted);
        assert_eq!(
            queue_name(&dotted, "orders.eu", "billing"),
            queue_name(&dotted, "orders", "eu.billing")
        );
    }

    #[test]
    fn long_names_are_cut_and_stay_distinct() {
        let config = AmqpConfig::default();
        let topic = "t".repeat(249);
        let a = queue_name(&config, &topic, &"a".repeat(249));
        let b = queue_name(&config, &topic, &"b".repeat(249));
        assert_eq!(a.len(), MAX_NAME);
        assert_eq!(b.len(), MAX_NAME);
        assert_ne!(a, b);
        assert_eq!(a, queue_name(&config, &topic, &"a".repeat(249)), "stable");
    }

    #[test]
    fn buckets_are_at_least_the_delay_and_at_most_a_fifth_more() {
        for ms in [0u64, 1, 10, 11, 99, 200, 1_000, 1_234, 60_000, 3_600_000] {
            let bucket = retry_bucket(Duration::from_millis(ms)).unwrap();
            assert!(bucket >= ms, "{ms} -> {bucket}");
            assert!(
                bucket <= (ms.max(10) as f64 * 1.19).ceil() as u64,
                "{ms} -> {bucket}"
            );
        }
        let max = Duration::from_millis(MAX_TTL_MS);
        assert_eq!(retry_bucket(max).unwrap(), MAX_TTL_MS);
        assert!(retry_bucket(max + Duration::from_millis(1)).is_err());
    }

    #[test]
    fn few_distinct_buckets_cover_a_day() {
        let mut buckets: Vec<u64> = (0..86_400u64)
            .map(|s| retry_bucket(Duration::from_secs(s)).unwrap())
            .collect();
        buckets.dedup();
        assert!(buckets.len() < 80, "{}", buckets.len());
    }
}
