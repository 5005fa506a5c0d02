//! Two services built on courier, the ones to run first: an **order flow**
//! (hybrid: a synchronous question, then asynchronous work) and a **loan
//! approval** (asynchronous: a chain of consumers). Each runs with one
//! command on the embedded default (the in-process broker and a SQLite
//! file, no server) and drives a scripted scenario against its own HTTP
//! API, printing a timeline:
//!
//! ```text
//! cargo run -p courier-examples --bin order-flow
//! cargo run -p courier-examples --bin loan-approval
//! ```
//!
//! The same services run as separate processes on any broker and on
//! PostgreSQL (`--broker URL --database URL --service NAME`, with the
//! Cargo features `amqp`, `kafka`, `nats` and `postgres`); the README has
//! the commands.
//!
//! # The order flow
//!
//! ```text
//!  client ─POST /orders─► api ──request/reply──► stock          (is it available?)
//!                          │   timeout · retry · circuit breaker
//!                          ├─ 409 out of stock, 503 stock service down
//!                          └─ one transaction: orders row + OrderPlaced in the outbox ─► 201
//!  outbox relay ──OrderPlaced──► inventory   (claim_in + reserve, one transaction)
//!                          └───► email       (IdempotencyLayer + mail row)
//!  client ─GET /orders/{id}─► the order, its reservation, its mail, its trace
//! ```
//!
//! | part | module | courier feature it shows |
//! |---|---|---|
//! | stock check | [`orders::api`], [`orders::stock`] | request/reply ([`Broker::request`](courier::Broker::request), [`runtime::responder`](courier::runtime::responder)); [`resilience`](courier::resilience): [`with_timeout`](courier::resilience::with_timeout), [`Retry`](courier::resilience::Retry), [`CircuitBreaker`](courier::resilience::CircuitBreaker) (only failures that say something about the stock service count: [`RequestError::is_retryable`](courier::request::RequestError::is_retryable)) |
//! | placing an order | [`orders::api`] | the transactional outbox (`enqueue` in the API's own transaction, a relay publishing committed rows); the trace context written into the outbox row |
//! | reserving stock | [`orders::inventory`] | the consumer runtime with typed [`Envelope`](courier::runtime::Envelope)s; the idempotency store's claim *inside* the reservation's transaction (`claim_in`): exactly once, no window |
//! | the confirmation | [`orders::email`] | [`IdempotencyLayer`](courier::idempotency::IdempotencyLayer) around a handler: a redelivery is acked without calling it |
//! | the view | [`orders::api`] | one correlation id (the order id) and one trace id seen by every service ([`flow_trace`]) |
//!
//! The API decides on a snapshot (the stock service only reads), the
//! inventory service reserves later: two orders racing for the last pear
//! can both get 201, and the second reservation then says `insufficient
//! stock`. That is the price of not locking stock across services; a
//! shop that cannot pay it reserves synchronously instead.
//!
//! The stock check is guarded by a per-request timeout (500 ms), three
//! attempts with jittered backoff for timeouts and missing responders, a
//! circuit breaker that opens after two such failed calls in a row and
//! probes again after a second, and a bound on the whole call (3 s). With
//! the stock service down, the first calls answer 503 after their retries,
//! and once the breaker is open every call answers 503 at once.
//!
//! # The loan approval
//!
//! ```text
//!  client ─POST /loans─► api ─ loans row + submitted (outbox) ─► 202 + reference
//!  submitted ─► credit-check ─► credit-checked ─► risk ─► risk-assessed ─► manager
//!                  │ malformed: dead letter             │ reject            │ approve / reject
//!                  ▼                                    ▼                   ▼
//!        loans.submitted.dlq ──────────────► decisions ◄──── decided ◄──────┘
//!  client ─GET /loans/{ref}─► status, steps, trace
//! ```
//!
//! | part | module | courier feature it shows |
//! |---|---|---|
//! | accepting | [`loans::api`] | the outbox again; 202 at once, the work is asynchronous |
//! | the levels | [`loans::levels`] | consumers publishing the next event with [`Meta::follow_up`](courier::runtime::Meta::follow_up): one correlation id (the reference) and causation ids along the chain; the handler runs in the message's trace context, so the whole flow is one trace |
//! | a flaky credit bureau | [`loans::levels`] | a transient [`HandlerError`](courier::runtime::HandlerError) retried with backoff by the runtime ([`RetryPolicy`](courier::runtime::RetryPolicy)) |
//! | a malformed application | [`loans::levels`], [`loans::decisions`] | a permanent failure dead-lettered to `loans.submitted.dlq` with its reason in [`DLQ_REASON`](courier::delivery::DLQ_REASON); a consumer of the dead letters writes the reason into the status |
//! | the decision | [`loans::decisions`] | the final status persisted once (a redelivered decision changes nothing) |
//!
//! The levels publish directly, after committing their step: a crash in
//! between publishes on the redelivery (at least once) and the step is
//! not recorded twice.
//!
//! # Database
//!
//! [`Database`] is SQLite (default) or PostgreSQL (feature `postgres`),
//! each with the outbox and the idempotency store on the same pool; the
//! schema is embedded with `sqlx::migrate!` (`migrations/sqlite`,
//! `migrations/postgres`). Run one SQLite file per process group: the
//! SQLite outbox relay must be alone on its file (one process with the
//! API); on PostgreSQL any number of processes share the database.
//!
//! # Topics and groups
//!
//! Every service declares the event subscriptions of its flow at start
//! ([`orders::OrderFlow::provision`], [`loans::LoanFlow::provision`]), so
//! an event published while its consumer is down waits in the broker
//! (on the in-process broker: while the process lives).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cli;
pub mod clock;
pub mod db;
pub mod error;
pub mod faults;
pub mod flow_trace;
pub mod http;
pub mod loans;
pub mod orders;
pub mod timeline;
pub mod topology;

pub use db::Database;
pub use error::{Error, Result};
