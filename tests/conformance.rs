//! The conformance suite against every adapter compiled in, each reached
//! through `courier::connect(url)`. Test names are `adapter::case`.
//!
//! Adapters on real brokers use the shared container of this test binary
//! (`courier_testkit::fixtures`); cases that restart the broker run on a
//! second container of their own, so the other cases are not disturbed.

use courier_testkit::{Adapter, Capability};

fn main() -> std::process::ExitCode {
    let mut adapters = Vec::new();
    if cfg!(feature = "memory") {
        adapters.push(Adapter::new(
            "memory",
            &[Capability::History, Capability::DeliveryCount],
            || courier::connect("memory://conformance"),
        ));
    }
    #[cfg(feature = "kafka")]
    adapters.push(kafka::adapter());
    #[cfg(feature = "nats")]
    adapters.push(nats::adapter());
    courier_testkit::run(&adapters, &courier_testkit::all_cases())
}

#[cfg(feature = "nats")]
mod nats {
    use courier_testkit::fixtures::{self, BrokerFixture, FixtureError};
    use courier_testkit::{Adapter, Capability};
    use tokio::sync::OnceCell;

    fn fixture_error(e: FixtureError) -> courier::Error {
        courier::Error::broker("nats", "start test server", false, e)
    }

    /// The server restart cases use: this binary's own, not the shared one.
    async fn restartable() -> courier::Result<&'static BrokerFixture> {
        static SERVER: OnceCell<BrokerFixture> = OnceCell::const_new();
        SERVER
            .get_or_try_init(fixtures::fresh_nats)
            .await
            .map_err(fixture_error)
    }

    pub(super) fn adapter() -> Adapter {
        Adapter::new(
            "nats",
            &[Capability::History, Capability::DeliveryCount],
            || async {
                let server = fixtures::nats().await.map_err(fixture_error)?;
                courier::connect(server.url()).await
            },
        )
        .with_restart(
            || async { courier::connect(restartable().await?.url()).await },
            || async {
                let server = restartable().await.map_err(|e| e.to_string())?;
                server.restart().await.map_err(|e| e.to_string())
            },
        )
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    use courier_testkit::fixtures::{self, BrokerFixture, FixtureError};
    use courier_testkit::{Adapter, Capability};
    use tokio::sync::OnceCell;

    fn fixture_error(e: FixtureError) -> courier::Error {
        courier::Error::broker("kafka", "start test broker", false, e)
    }

    /// The broker restart cases use: this binary's own, not the shared one.
    async fn restartable() -> courier::Result<&'static BrokerFixture> {
        static SERVER: OnceCell<BrokerFixture> = OnceCell::const_new();
        SERVER
            .get_or_try_init(fixtures::fresh_kafka)
            .await
            .map_err(fixture_error)
    }

    /// Kafka keeps history (a group can start at the earliest offset) and
    /// this adapter counts deliveries within a consumer session, which is
    /// what the cases observe.
    pub(super) fn adapter() -> Adapter {
        Adapter::new(
            "kafka",
            &[Capability::History, Capability::DeliveryCount],
            || async {
                let server = fixtures::kafka().await.map_err(fixture_error)?;
                courier::connect(server.url()).await
            },
        )
        .with_restart(
            || async { courier::connect(restartable().await?.url()).await },
            || async {
                let server = restartable().await.map_err(|e| e.to_string())?;
                server.restart().await.map_err(|e| e.to_string())
            },
        )
    }
}
