//! Smoke tests of the real-server fixtures: per server, connect with the
//! real client, do one round trip, restart the server, reconnect to the same
//! URL, find what was stored before the restart, and do another round trip.
//!
//! Run with `cargo test -p courier-testkit --features fixtures` after
//! `scripts/test-env.sh`.

use std::sync::Arc;
use std::time::Duration;

use courier_testkit::fixtures::{self, BrokerFixture, FixtureError};
use futures::StreamExt;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Restarts the fixture's server and checks that its address stays the
/// same. Returns `false` (after printing why) when the fixture cannot be
/// restarted here, e.g. a server given by `COURIER_TEST_<NAME>_URL`.
async fn restart(fixture: &BrokerFixture) -> bool {
    let (url, port) = (fixture.url().to_owned(), fixture.port());
    match fixture.restart().await {
        Ok(()) => {
            assert_eq!(fixture.url(), url);
            assert_eq!(fixture.port(), port);
            true
        }
        Err(e) if e.is_unsupported() => {
            eprintln!("skipping the restart part: {e}");
            false
        }
        Err(e) => panic!("restart failed: {e}"),
    }
}

#[tokio::test]
async fn shared_fixtures_are_shared_and_not_restartable() {
    let first = fixtures::redis().await.expect("redis fixture");
    let second = fixtures::redis().await.expect("redis fixture");
    assert!(Arc::ptr_eq(&first, &second));
    assert!(first.url().starts_with("redis://"));
    let error: FixtureError = first
        .restart()
        .await
        .expect_err("shared fixtures cannot restart");
    assert!(error.is_unsupported(), "{error}");
    if !first.is_external() {
        assert!(first.is_shared());
        assert!(first.container_id().is_some());
    }

    // Many tests at once get the same container.
    let handles: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async { fixtures::redis().await.expect("redis fixture") }))
        .collect();
    for handle in handles {
        assert!(Arc::ptr_eq(&first, &handle.await.unwrap()));
    }

    let client = redis::Client::open(first.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let key = fixtures::unique_name("shared");
    let _: () = redis::AsyncCommands::set(&mut connection, &key, "shared")
        .await
        .unwrap();
    let value: String = redis::AsyncCommands::get(&mut connection, &key)
        .await
        .unwrap();
    assert_eq!(value, "shared");
}

mod rabbitmq {
    use lapin::options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

    use super::*;

    async fn open(url: &str) -> (Connection, Channel) {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("AMQP connection");
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        channel
            .queue_declare(
                "smoke".into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        (connection, channel)
    }

    async fn publish(channel: &Channel, body: &[u8]) {
        let confirm = channel
            .basic_publish(
                "".into(),
                "smoke".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    async fn get(channel: &Channel) -> Vec<u8> {
        let message = channel
            .basic_get("smoke".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("a message in the queue");
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
        message.delivery.data
    }

    #[tokio::test]
    async fn round_trip_restart_round_trip() {
        let mq = fixtures::fresh_rabbitmq().await.expect("rabbitmq fixture");
        assert!(mq.url().starts_with("amqp://guest:guest@127.0.0.1:"));
        let (connection, channel) = open(mq.url()).await;
        publish(&channel, b"before restart").await;
        assert_eq!(get(&channel).await, b"before restart");
        publish(&channel, b"kept across restart").await;
        drop(connection);

        if !restart(&mq).await {
            return;
        }
        let (_connection, channel) = open(mq.url()).await;
        assert_eq!(get(&channel).await, b"kept across restart");
        publish(&channel, b"after restart").await;
        assert_eq!(get(&channel).await, b"after restart");
        let empty = channel
            .basic_get("smoke".into(), BasicGetOptions::default())
            .await
            .unwrap();
        assert!(empty.is_none());
    }
}

mod nats {
    use async_nats::jetstream::{self, Context, consumer, stream};

    use super::*;

    async fn connect(url: &str) -> Context {
        jetstream::new(async_nats::connect(url).await.expect("NATS connection"))
    }

    async fn publish(js: &Context, body: &'static str) -> u64 {
        js.publish("smoke.events", body.into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    }

    async fn next(js: &Context) -> String {
        let consumer: consumer::PullConsumer =
            js.get_consumer_from_stream("smoke", "SMOKE").await.unwrap();
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(TIMEOUT)
            .messages()
            .await
            .unwrap();
        let message = batch.next().await.expect("a message").unwrap();
        message.double_ack().await.unwrap();
        String::from_utf8(message.payload.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn round_trip_restart_round_trip() {
        let server = fixtures::fresh_nats().await.expect("nats fixture");
        assert!(server.url().starts_with("nats://127.0.0.1:"));
        let js = connect(server.url()).await;
        js.create_stream(stream::Config {
            name: "SMOKE".to_owned(),
            subjects: vec!["smoke.>".to_owned()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
        js.create_consumer_on_stream(
            consumer::pull::Config {
                durable_name: Some("smoke".to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
            "SMOKE",
        )
        .await
        .unwrap();
        assert_eq!(publish(&js, "before restart").await, 1);
        assert_eq!(next(&js).await, "before restart");
        assert_eq!(publish(&js, "kept across restart").await, 2);
        drop(js);

        if !restart(&server).await {
            return;
        }
        let js = connect(server.url()).await;
        let mut stream = js.get_stream("SMOKE").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 2);
        assert_eq!(next(&js).await, "kept across restart");
        assert_eq!(publish(&js, "after restart").await, 3);
        assert_eq!(next(&js).await, "after restart");
    }
}

mod kafka {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Message};

    use super::*;

    fn config(bootstrap: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        config
    }

    async fn produce(bootstrap: &str, body: &str) -> i64 {
        let producer: FutureProducer = config(bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        let delivery = producer
            .send(FutureRecord::to("smoke").key("k").payload(body), TIMEOUT)
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
        assert_eq!(delivery.partition, 0);
        delivery.offset
    }

    /// Consumes the next message of group `smoke` and commits it.
    async fn consume(bootstrap: &str) -> (i64, String) {
        let consumer: StreamConsumer = config(bootstrap)
            .set("group.id", "smoke")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["smoke"]).unwrap();
        let message = tokio::time::timeout(TIMEOUT, consumer.recv())
            .await
            .expect("a message within the timeout")
            .unwrap();
        consumer.commit_message(&message, CommitMode::Sync).unwrap();
        let body = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
        (message.offset(), body)
    }

    #[tokio::test]
    async fn round_trip_restart_round_trip() {
        let broker = fixtures::fresh_kafka().await.expect("kafka fixture");
        let bootstrap = broker.bootstrap_servers().to_owned();
        assert_eq!(broker.url(), format!("kafka://{bootstrap}"));
        let admin: AdminClient<DefaultClientContext> = config(&bootstrap).create().unwrap();
        let created = admin
            .create_topics(
                &[NewTopic::new("smoke", 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
        assert_eq!(created.len(), 1);
        created.into_iter().next().unwrap().expect("topic created");
        drop(admin);

        assert_eq!(produce(&bootstrap, "before restart").await, 0);
        assert_eq!(consume(&bootstrap).await, (0, "before restart".to_owned()));
        assert_eq!(produce(&bootstrap, "kept across restart").await, 1);

        if !restart(&broker).await {
            return;
        }
        // Messages and the group's committed offset survived the restart.
        assert_eq!(
            consume(&bootstrap).await,
            (1, "kept across restart".to_owned())
        );
        assert_eq!(produce(&bootstrap, "after restart").await, 2);
        assert_eq!(consume(&bootstrap).await, (2, "after restart".to_owned()));
    }
}

mod postgres {
    use tokio_postgres::{Client, NoTls};

    use super::*;

    async fn connect(url: &str) -> Client {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .expect("PostgreSQL connection");
        tokio::spawn(connection);
        client
    }

    async fn bodies(client: &Client) -> Vec<String> {
        client
            .query("SELECT body FROM smoke ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    #[tokio::test]
    async fn round_trip_restart_round_trip() {
        let db = fixtures::fresh_postgres().await.expect("postgres fixture");
        assert!(db.url().starts_with("postgres://postgres@127.0.0.1:"));
        let client = connect(db.url()).await;
        client
            .batch_execute("CREATE TABLE smoke (id INT4 PRIMARY KEY, body TEXT NOT NULL)")
            .await
            .unwrap();
        let inserted = client
            .execute("INSERT INTO smoke VALUES (1, 'before restart')", &[])
            .await
            .unwrap();
        assert_eq!(inserted, 1);
        assert_eq!(bodies(&client).await, ["before restart"]);

        if !restart(&db).await {
            return;
        }
        // The old session is gone; a new one finds the committed row.
        assert!(client.query("SELECT 1", &[]).await.is_err());
        let client = connect(db.url()).await;
        assert_eq!(bodies(&client).await, ["before restart"]);
        client
            .execute("INSERT INTO smoke VALUES (2, 'after restart')", &[])
            .await
            .unwrap();
        assert_eq!(bodies(&client).await, ["before restart", "after restart"]);
    }
}

mod redis_fixture {
    use redis::AsyncCommands;
    use redis::aio::MultiplexedConnection;

    use super::*;

    async fn connect(url: &str) -> MultiplexedConnection {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("Redis connection")
    }

    #[tokio::test]
    async fn round_trip_restart_round_trip() {
        let server = fixtures::fresh_redis().await.expect("redis fixture");
        assert!(server.url().starts_with("redis://127.0.0.1:"));
        let mut connection = connect(server.url()).await;
        let _: () = connection
            .set("smoke:before", "before restart")
            .await
            .unwrap();
        let value: String = connection.get("smoke:before").await.unwrap();
        assert_eq!(value, "before restart");
        drop(connection);

        if !restart(&server).await {
            return;
        }
        let mut connection = connect(server.url()).await;
        let value: String = connection.get("smoke:before").await.unwrap();
        assert_eq!(value, "before restart");
        let _: () = connection
            .set("smoke:after", "after restart")
            .await
            .unwrap();
        let value: String = connection.get("smoke:after").await.unwrap();
        assert_eq!(value, "after restart");
    }
}
