//! The conformance suite against every adapter compiled in, each reached
//! through `courier::connect(url)`. Test names are `adapter::case`.

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
    courier_testkit::run(&adapters, &courier_testkit::all_cases())
}
