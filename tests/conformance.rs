//! The conformance suite against every adapter compiled in, each reached
//! through `courier::connect(url)`. Test names are `adapter::case`.
//!
//! Adapters on real brokers use the shared container of this test binary
//! (`courier_testkit::fixtures`); their restart behaviour is tested by each
//! adapter's own reconnect tests, which restart a container of their own.

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
    #[cfg(feature = "nats")]
    adapters.push(Adapter::new(
        "nats",
        &[Capability::History, Capability::DeliveryCount],
        || async {
            let server = courier_testkit::fixtures::nats()
                .await
                .map_err(|e| courier::Error::broker("nats", "start fixture", false, e))?;
            courier::connect(server.url()).await
        },
    ));
    courier_testkit::run(&adapters, &courier_testkit::all_cases())
}
