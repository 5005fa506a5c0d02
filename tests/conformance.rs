//! The conformance suite against every adapter compiled in, each reached
//! through `courier::connect(url)`. Test names are `adapter::case`.
//!
//! Adapters on real brokers use the shared container of this test binary
//! (`courier_testkit::fixtures`); cases that restart the broker run on a
//! second container of their own, so the other cases are not disturbed.

#[cfg(any(feature = "amqp", feature = "kafka", feature = "nats"))]
use courier_testkit::fixtures;
use courier_testkit::{Adapter, Capability};

fn main() -> std::process::ExitCode {
    let mut adapters = Vec::new();
    if cfg!(feature = "memory") {
        adapters.push(
            Adapter::new(
                "memory",
                &[
                    Capability::History,
                    Capability::DeliveryCount,
                    Capability::NoResponders,
                ],
                || courier::connect("memory://conformance"),
            )
            .with_queue_limit(2, || {
                courier::connect("memory://queue-limit?max_queue_len=2&when_full=reject")
            })
            // Cases may connect with URL options of their own.
            .with_options(|options| async move {
                courier::connect(&with_options("memory://conformance", &options)).await
            }),
        );
    }
    // Quorum queues (the default) count deliveries; RabbitMQ keeps no
    // history for groups created later. A restarting RabbitMQ takes a while
    // to take connections again, hence the patience.
    #[cfg(feature = "amqp")]
    adapters.push(
        on_server!(
            "amqp",
            &[
                Capability::DeliveryCount,
                Capability::ThawRecovery,
                Capability::NoResponders,
                Capability::RefusesTopicsWithoutGroups
            ],
            fixtures::Server::RabbitMq,
            fixtures::rabbitmq,
            fixtures::fresh_rabbitmq
        )
        .with_patience(std::time::Duration::from_secs(30))
        .with_proxy(
            FAULT_BOUND,
            || upstream("amqp", fixtures::rabbitmq()),
            // A short reconnect budget: the long-outage case outlasts it.
            |url| async move {
                courier::connect(&format!(
                    "{url}?{FAULT_OPTIONS}&reconnect_give_up=3s&connect_timeout=2s"
                ))
                .await
            },
        ),
    );
    // Kafka keeps history (a group can start at the earliest offset); the
    // adapter counts deliveries within a consumer session. The test broker
    // answers slowly under load (metadata, group joins), hence the longer
    // connect timeout and patience: after several members closed at once
    // (`concurrent_subscribe_and_close_loses_nothing`), tansu has been seen
    // to take more than 30 s under the whole suite's load before the next
    // member of the group is given the partitions, while the same case alone
    // takes a few seconds. The patience is only an upper bound: a passing
    // case waits no longer for it (that case waits five times as long for
    // its last member's first delivery). It also failed now and then with
    // no assignment at all: stock tansu 0.6 keeps a leader that left a
    // re-forming group as its leader for good. The test image carries a fix
    // (testkit/images/kafka/patches; `adapters/kafka/tests/group_churn.rs`
    // makes that moment happen every time). No proxy cases: a Kafka client
    // reaches the broker at the address its metadata advertises, past any
    // proxy.
    #[cfg(feature = "kafka")]
    adapters.push(
        on_server!(
            "kafka",
            &[Capability::History, Capability::DeliveryCount],
            fixtures::Server::Kafka,
            fixtures::kafka,
            fixtures::fresh_kafka,
            "?connect_timeout=30s",
            true
        )
        .with_patience(std::time::Duration::from_secs(60))
        // A partition goes to one member of a group: for the members of a
        // group to share it, a topic needs more partitions than the one
        // the other cases keep their order in.
        .with_partitioned(|| async {
            let server = fixtures::kafka()
                .await
                .map_err(|e| test_server_error("kafka", e))?;
            courier::connect(&format!(
                "{}?connect_timeout=30s&partitions=4",
                server.url()
            ))
            .await
        }),
    );
    #[cfg(feature = "nats")]
    adapters.push(
        on_server!(
            "nats",
            &[
                Capability::History,
                Capability::DeliveryCount,
                Capability::ThawRecovery,
                Capability::NoResponders
            ],
            fixtures::Server::Nats,
            fixtures::nats,
            fixtures::fresh_nats
        )
        .with_proxy(
            FAULT_BOUND,
            || upstream("nats", fixtures::nats()),
            // A message in flight when its connection is reset comes back
            // after `ack_wait` (30 s by default, past the cases' patience).
            |url| async move {
                courier::connect(&format!("{url}?{FAULT_OPTIONS}&ack_wait=5s")).await
            },
        ),
    );
    courier_testkit::run(&adapters, &courier_testkit::all_cases())
}

/// The bound the fault cases hold every operation to, and the URL options
/// (shared by every adapter) that set it.
#[cfg(any(feature = "amqp", feature = "kafka", feature = "nats"))]
const FAULT_BOUND: std::time::Duration = std::time::Duration::from_secs(3);
#[cfg(any(feature = "amqp", feature = "kafka", feature = "nats"))]
const FAULT_OPTIONS: &str = "publish_timeout=3s";

/// `url` with `options` set, replacing its own of the same name.
fn with_options(url: &str, options: &[(String, String)]) -> String {
    let options: Vec<(&str, &str)> = options
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    courier::adapter::url::set_options(url, &options)
}

/// The shared server's URL and the `host:port` in it, for a proxy in
/// front of it.
#[cfg(any(feature = "amqp", feature = "nats"))]
async fn upstream(
    adapter: &'static str,
    server: impl std::future::Future<
        Output = Result<std::sync::Arc<fixtures::BrokerFixture>, fixtures::FixtureError>,
    >,
) -> courier::Result<(String, String)> {
    let server = server.await.map_err(|e| test_server_error(adapter, e))?;
    Ok((server.url().to_owned(), server.address().to_owned()))
}

/// A test server that did not start, as a broker error of `adapter`.
#[cfg(any(feature = "amqp", feature = "kafka", feature = "nats"))]
fn test_server_error(adapter: &'static str, e: fixtures::FixtureError) -> courier::Error {
    courier::Error::broker(
        adapter,
        "start test server",
        courier::BrokerErrorKind::Unavailable,
        e,
    )
}

/// An adapter on a real server: the cases share this binary's `$shared`
/// server; the restart and fault cases use one `$fresh` server of their own. URL
/// options (`$options`, starting with `?`) are added to the servers' URLs.
///
/// A server given by `COURIER_TEST_<NAME>_URL` has no container to restart,
/// kill or freeze: the adapter then lacks those capabilities, and the cases
/// that need them are listed as ignored (`[lacks restart]`), not failed.
#[cfg(any(feature = "amqp", feature = "kafka", feature = "nats"))]
macro_rules! on_server {
    ($name:literal, $capabilities:expr, $server:expr, $shared:path, $fresh:path) => {
        on_server!($name, $capabilities, $server, $shared, $fresh, "", false)
    };
    ($name:literal, $capabilities:expr, $server:expr, $shared:path, $fresh:path, $options:literal, $restart_after_thaw:literal) => {{
        use courier_testkit::fixtures::{BrokerFixture, FixtureError};
        use tokio::sync::OnceCell;

        fn fixture_error(e: FixtureError) -> courier::Error {
            courier::Error::broker(
                $name,
                "start test server",
                courier::BrokerErrorKind::Unavailable,
                e,
            )
        }

        async fn restartable() -> courier::Result<&'static BrokerFixture> {
            static SERVER: OnceCell<BrokerFixture> = OnceCell::const_new();
            SERVER.get_or_try_init($fresh).await.map_err(fixture_error)
        }

        let adapter = Adapter::new($name, $capabilities, || async {
            let server = $shared().await.map_err(fixture_error)?;
            courier::connect(&format!("{}{}", server.url(), $options)).await
        })
        .with_options(|options| async move {
            let server = $shared().await.map_err(fixture_error)?;
            let url = format!("{}{}", server.url(), $options);
            courier::connect(&with_options(&url, &options)).await
        });
        let server: fixtures::Server = $server;
        if server.is_given_by_url() {
            eprintln!(
                "{}: the server is given by {}: the cases that restart, kill or freeze it are skipped",
                $name,
                server.url_var()
            );
            adapter
        } else {
            adapter
                .with_restart(
                    || async {
                        let server = restartable().await?;
                        courier::connect(&format!("{}{}", server.url(), $options)).await
                    },
                    || async {
                        let server = restartable().await.map_err(|e| e.to_string())?;
                        server.restart().await.map_err(|e| e.to_string())
                    },
                )
                .with_kill(|| async {
                    let server = restartable().await.map_err(|e| e.to_string())?;
                    server.kill_and_start().await.map_err(|e| e.to_string())
                })
                .with_freeze(
                    FAULT_BOUND,
                    || async {
                        let server = restartable().await?;
                        let options = if $options.is_empty() {
                            "?"
                        } else {
                            concat!($options, "&")
                        };
                        courier::connect(&format!("{}{options}{FAULT_OPTIONS}", server.url())).await
                    },
                    || async {
                        let server = restartable().await.map_err(|e| e.to_string())?;
                        server.pause().await.map_err(|e| e.to_string())
                    },
                    || async {
                        let server = restartable().await.map_err(|e| e.to_string())?;
                        server.unpause().await.map_err(|e| e.to_string())?;
                        if $restart_after_thaw {
                            server.restart().await.map_err(|e| e.to_string())?;
                        }
                        Ok(())
                    },
                )
        }
    }};
}
#[cfg(any(feature = "amqp", feature = "kafka", feature = "nats"))]
use on_server;
