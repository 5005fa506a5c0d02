//! Helpers shared by the adapter's tests.
#![allow(dead_code, unreachable_pub)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use courier_core::{Delivery, DeliveryStream};
use courier_testkit::fixtures::{BrokerFixture, rabbitmq, unique_name};
use futures::StreamExt;

/// The RabbitMQ container shared by the tests of this binary.
pub async fn shared() -> Arc<BrokerFixture> {
    rabbitmq().await.expect("RabbitMQ fixture")
}

/// A topic or group name unique to this run.
pub fn name(prefix: &str) -> String {
    unique_name(prefix)
}

/// Runs `rabbitmqctl` in the fixture's container; `None` when the fixture
/// is a server given by URL (nothing to exec into).
pub fn rabbitmqctl(fixture: &BrokerFixture, args: &[&str]) -> Option<String> {
    let id = fixture.container_id()?;
    let output = Command::new("docker")
        .args(["exec", id, "rabbitmqctl"])
        .args(args)
        .output()
        .expect("docker exec");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A virtual host of its own (guest may use it), so that a test can close
/// every connection in it without touching the other tests. Returns the
/// URL for it, or `None` when the fixture cannot be administered.
pub fn own_vhost(fixture: &BrokerFixture, vhost: &str) -> Option<String> {
    rabbitmqctl(fixture, &["add_vhost", vhost])?;
    rabbitmqctl(
        fixture,
        &["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
    )?;
    Some(format!(
        "amqp://guest:guest@{}:{}/{vhost}",
        fixture.host(),
        fixture.port()
    ))
}

/// Closes every client connection of `vhost`, as a broker-side failure would.
pub fn kill_connections(fixture: &BrokerFixture, vhost: &str) {
    rabbitmqctl(
        fixture,
        &[
            "close_all_connections",
            "-p",
            vhost,
            "test: connection killed",
        ],
    )
    .expect("administered fixture");
}

/// The next delivery within `patience`.
pub async fn next(stream: &mut DeliveryStream, patience: Duration) -> Delivery {
    courier_testkit::deliveries::next_within(stream, patience).await
}

/// Asserts that nothing arrives within `quiet`.
pub async fn nothing(stream: &mut DeliveryStream, quiet: Duration) {
    if let Ok(Some(item)) = tokio::time::timeout(quiet, stream.next()).await {
        match item {
            Ok(d) => panic!("unexpected delivery {:?}", d.message()),
            Err(e) => panic!("unexpected stream error {e}"),
        }
    }
}

/// The payload as text.
pub fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(delivery.message().payload()).into_owned()
}
