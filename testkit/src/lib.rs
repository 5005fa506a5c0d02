//! courier-testkit: the conformance suite every courier adapter must pass,
//! and real-broker fixtures for tests.
//!
//! The suite is written once and run against any adapter through an
//! [`Adapter`]: a name, a way to connect a fresh [`courier_core::Broker`], and
//! the [`Capability`]s the adapter declares. A case that needs a capability
//! the adapter lacks is reported as *ignored* with the missing capability
//! named (`test [lacks history] amqp::new_group_sees_history ... ignored`),
//! never as passed.
//!
//! Third-party adapters run it from a test target with `harness = false`:
//!
//! ```no_run
//! use courier_testkit::{Adapter, Capability};
//!
//! fn main() -> std::process::ExitCode {
//!     let memory = Adapter::new("memory", &[Capability::History, Capability::DeliveryCount], || async {
//!         Ok(courier_memory::MemoryBroker::new().into_broker())
//!     });
//!     courier_testkit::run(&[memory], &courier_testkit::all_cases())
//! }
//! ```
//!
//! Test names are `adapter::case`, so a run shows per adapter what passed.

pub mod bench;
pub mod bench_request;
pub mod bench_resident;
pub mod bench_runs;
pub mod close_cases;
mod competing;
pub mod conformance;
pub mod dead_letter_cases;
pub mod deliveries;
pub mod fault_cases;
/// Real servers for tests (RabbitMQ, NATS, Kafka-protocol, PostgreSQL, Redis) through testcontainers.
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod foreign_headers;
mod harness;
pub mod log_lines;
pub mod observability_cases;
pub mod proxy;
pub mod request_cases;
pub mod request_fault_cases;
pub mod runtime_cases;
pub mod unroutable_cases;

pub use harness::{Adapter, Capability, Case, Ctx, run, trials};

/// Every case of the suite: the conformance cases, the consumer runtime's
/// cases, the dead-letter cases, the observability cases (lag, health), the
/// request/reply cases (under faults too), the fault cases, the
/// unroutable-publish cases and the close cases.
pub fn all_cases() -> Vec<Case> {
    let mut cases = conformance::cases();
    cases.extend(runtime_cases::cases());
    cases.extend(dead_letter_cases::cases());
    cases.extend(observability_cases::cases());
    cases.extend(request_cases::cases());
    cases.extend(request_fault_cases::cases());
    cases.extend(fault_cases::cases());
    cases.extend(unroutable_cases::cases());
    cases.extend(close_cases::cases());
    cases
}
