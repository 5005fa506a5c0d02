//! The conformance suite on the in-process broker.

use courier_memory::MemoryBroker;
use courier_testkit::{Adapter, Capability};

fn main() -> std::process::ExitCode {
    let memory = Adapter::new(
        "memory",
        &[Capability::History, Capability::DeliveryCount],
        || async { Ok(MemoryBroker::named("conformance").into_broker()) },
    );
    courier_testkit::run(&[memory], &courier_testkit::all_cases())
}
