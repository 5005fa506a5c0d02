//! The consumer runtime: write a handler, and the runtime does the rest,
//! identically on every broker.
//!
//! ```text
//!            ┌──────────── Consumer ─────────────────────────────────────┐
//! stream ──► │ dispatch ─► lane per key / free ─► slot ─► attempt ─► settle │
//!            └──────────────────────────────────────────────────────────┘
//!                                     attempt = layers ─► handler
//! ```
//!
//! - **Handlers** ([`Handler`]): [`typed`] closures get the payload decoded
//!   from JSON (a payload that does not decode is dead-lettered at once);
//!   [`envelope`] handlers (closures or [`Consume`] structs) get an
//!   [`Envelope`]: the decoded body with its context ([`Meta`]: ids, key,
//!   headers, correlation and causation, topic, group, attempt, delivery
//!   count) and [`Meta::follow_up`] to publish the next message of the
//!   flow; [`raw`] closures get the [`Message`](crate::Message) and
//!   [`raw_envelope`] handlers the raw payload with its context. A handler returns
//!   `Ok(())` (ack) or a [`HandlerError`]: transient (retry) unless
//!   [`HandlerError::permanent`] (dead-letter now). A panic is a transient
//!   failure, never a crashed consumer.
//! - **Concurrency**: at most [`ConsumerBuilder::concurrency`] attempts run
//!   at once. The subscription's prefetch is tied to it (twice the
//!   concurrency, at least [`MIN_PREFETCH`] = 256, see [Prefetch](#prefetch));
//!   everything prefetched counts against the broker's limit, so memory
//!   stays bounded.
//! - **Ordering lanes**: messages with the same key are handled one at a
//!   time in arrival order; different keys run in parallel; messages
//!   without a key run freely (in arrival order of *start*, since their
//!   slot is taken before they are dispatched). A message being retried
//!   holds its lane: later messages of its key wait, so the order holds
//!   through retries.
//! - **Retry and dead-lettering** ([`RetryPolicy`]): after a transient
//!   failure the message is tried again after an exponential, jittered
//!   delay (or the failure's [`retry_after`](HandlerError::retry_after)
//!   hint, if longer); after the last attempt, or at once for a permanent
//!   failure, it is nacked with [`Nack::DeadLetter`](crate::Nack::DeadLetter):
//!   the adapter publishes a copy to `<topic>.dlq` (or
//!   [`ConsumerBuilder::dead_letter_topic`]) with the reason, attempt count,
//!   original topic, group and first/last failure times
//!   ([`crate::delivery`]'s `DLQ_*` headers), then removes the original.
//!   The dead-letter topic always exists and a refused copy never loops:
//!   see [Dead letters](#dead-letters).
//! - **Where handlers run**: each delivery starts on the consumer's
//!   dispatch task and moves to a task of its own at its first wait that
//!   is not ready at once (with concurrency 1 it stays on the dispatch
//!   task). A handler that finishes without waiting thus costs no task
//!   spawn or cross-thread wake-up, which is most of what a consumer costs
//!   over a bare receive loop; a handler that computes for long before its
//!   first wait holds up dispatching meanwhile, so hand such work to
//!   `tokio::task::spawn_blocking` (as in any async code).
//! - **Lifecycle**: [`Consumer::start`] returns once subscribed, with a
//!   [`RunningConsumer`] whose [`shutdown`](RunningConsumer::shutdown)
//!   returns the final [`ConsumerStats`]; dropping it stops the consumer
//!   and every task it started. An [`App`] runs several consumers with
//!   shared layers until a signal and stops them together.
//! - **Shutdown** ([`RunningConsumer::shutdown`], [`ShutdownHandle`],
//!   [`App::run_until_signal`]): in two phases, described at
//!   [`Consumer::start`]. The phase-2 deadline runs from the moment the
//!   shutdown is triggered.
//! - **Metrics** ([`ConsumerMetrics`]): in-flight and running counts, active
//!   lanes, handled/failed/retried/dead-lettered counters.
//! - **Telemetry** ([`crate::telemetry`]): each delivery gets a
//!   `process {topic}` span (the handler runs inside it, with the message's
//!   trace context current, so follow-ups stay in the trace) and an
//!   `ack`/`nack`/`dead_letter` span; the messaging metrics are recorded
//!   through the `metrics` facade; [`ConsumerBuilder::report_lag`] reads
//!   the group's lag in the background and [`RunningConsumer::status`]
//!   says what the consumer is doing.
//!
//! # Why retry is built in, not a layer
//!
//! Retrying is the consumer's job rather than a [`Layer`]'s because it
//! needs what only the consumer has: the attempt count and failure times
//! for the dead-letter headers, the decision between retrying and
//! dead-lettering, the shutdown deadline (a message waiting for its next
//! attempt is in flight, and is requeued when the deadline cuts it short),
//! and the ordering lane it must hold. Every attempt goes through the whole
//! middleware stack again, so a timeout bounds one attempt, a circuit
//! breaker counts every failure, and an idempotency hook claims and
//! releases per attempt.
//!
//! Retries happen in the consumer while it holds the delivery, not by
//! nacking it back to the broker: this keeps per-key order, keeps the
//! attempt count exact on brokers that do not count deliveries, and costs
//! no broker round trip. A message whose retries are cut short by a
//! shutdown comes back to the next consumer and starts counting again.
//!
//! # Dead letters
//!
//! A dead letter is kept, never looped and never lost, on every broker:
//!
//! - **The name is checked at start.** [`Consumer::start`] refuses an
//!   invalid dead-letter topic ([`ConsumerBuilder::dead_letter_topic`], or
//!   a `<topic>.dlq` too long for a topic name) with
//!   [`Error::InvalidName`](crate::Error::InvalidName) before it consumes
//!   anything, not at the first poison message.
//! - **The dead-letter topic has a group before the first message.**
//!   Before it subscribes, [`Consumer::start`] provisions a group on the
//!   dead-letter topic named as the consumer's own group (the consumer
//!   `billing` on `orders` provisions `billing` on `orders.dlq`), as
//!   MassTransit keeps an `_error` queue per endpoint and Spring Cloud
//!   Stream binds a DLQ per group. So the dead letters are kept until
//!   someone reads them (on RabbitMQ a copy to an exchange with no queue
//!   would be refused, on Kafka and NATS a group created later would not
//!   see it, on memory it would be kept only as history). Reading that
//!   group (with a plain subscription or the `courier` command) is how dead
//!   letters are inspected or replayed. Where the dead-letter topic's
//!   groups are provisioned elsewhere, turn this off with
//!   [`ConsumerBuilder::provision_dead_letter_group`].
//! - **A refused copy is published again, with a backoff, while the
//!   message is held.** When the broker refuses the copy (no queue bound
//!   with the provisioning turned off, a full dead-letter queue, an
//!   outage), the consumer keeps the original unsettled and in flight
//!   (its ordering lane held), logs a warning, counts the failure in
//!   [`ConsumerStats::dead_letter_failures`] and
//!   [`ConsumerStatus::dead_letter_failures`], and publishes the copy
//!   again after a jittered exponential delay from
//!   [`DEAD_LETTER_RETRY_MIN_DELAY`] (100 ms) up to
//!   [`DEAD_LETTER_RETRY_MAX_DELAY`] (30 s), until the broker takes it.
//!   The handler is not run again meanwhile: the failure was decided, only
//!   its copy is late. Once the copy is taken the original is removed, so
//!   the dead-letter topic gets it once. When the shutdown deadline passes
//!   first, the original is given back (it comes back to the next
//!   consumer, which handles it again). Adapters that cannot hold a
//!   delivery while publishing (see
//!   [`Acknowledger::publish_dead_letter`](crate::adapter::Acknowledger::publish_dead_letter))
//!   fall back to [`Nack::DeadLetter`](crate::Nack::DeadLetter), which
//!   requeues the original when its copy is refused.
//! - **Messages an adapter cannot decode** (a foreign producer's headers
//!   that are not UTF-8, say) never reach a handler: the adapter
//!   dead-letters them to `<topic>.dlq` itself with the same backoff (on
//!   NATS as a delayed redelivery, on Kafka while the record is held;
//!   RabbitMQ and memory have no such messages).
//!
//! # Performance
//!
//! What a message costs the runtime on top of receiving and acking it,
//! and why it is no more:
//!
//! - **No allocation of the runtime's per message.** A consumer whose
//!   handler is not wrapped in layers keeps the handler's own type and
//!   calls it through [`Handler::call_unboxed`], so the handler's future
//!   lives inside the per-delivery future instead of a box (the handlers
//!   [`raw`], [`typed`], [`envelope`], [`raw_envelope`] and [`responder`]
//!   build all do this; a hand-written [`Handler`] gets the boxed
//!   [`Handler::call`] unless it overrides `call_unboxed`). With layers,
//!   the stack is type-erased (layers are chosen at run time and stacked
//!   on [`BoxHandler`]s), and each attempt boxes the outermost layer's
//!   future. With more concurrency, each delivery's processing (a keyed
//!   delivery's lane) goes into a heap slot, once, and is never copied
//!   afterwards, since it may move to a task of its own; a processing that
//!   finished without waiting leaves its slot to the next delivery, so
//!   handlers that finish at once cost no allocation of the runtime's.
//!   Only a processing that waits takes its slot along.
//! - **The per-delivery future is small** (about 0.7 KB, most of it the
//!   delivery and its trace state): it is moved into its place once per
//!   message. The rare paths (waiting for a slot, retrying, dead-lettering,
//!   requeueing) are boxed futures of their own, the ack borrows the
//!   delivery instead of holding a copy, and the subscription is polled
//!   in place (resubscribing after an outage is a boxed future too).
//! - **No task, no wake-up, unless the handler waits.** Each delivery is
//!   first polled on the dispatch task (see "Where handlers run" above);
//!   only one that waits is spawned. At concurrency 1 nothing is spawned
//!   at all and no concurrency slot is taken.
//! - **Copies share.** A handler gets its own [`Message`](crate::Message)
//!   (raw handlers) or [`Meta`] (envelope handlers), but the payload,
//!   headers and key are shared with the delivery's copy, not duplicated:
//!   cloning a message counts references instead of copying bytes.
//! - **Lanes cost nothing for keyless messages** and little for keyed
//!   ones: a key is found in the lane table by a seeded 64-bit hash, and a
//!   lane is registered only when its message waits, so a keyed message
//!   whose handler finishes at once touches the table once.
//! - **Counters are cheap.** The [`ConsumerStats`] numbers are relaxed
//!   atomics; at concurrency 1 only the dispatch task changes them, so
//!   they are plain loads and stores rather than locked instructions.
//! - **Telemetry nobody listens to is skipped.** Without a metrics
//!   recorder (or with [`crate::telemetry::set_enabled`] off) no clock is
//!   read for message ages or durations; without a `tracing` subscriber
//!   (or with one that filters `INFO` out) no span is built, and the trace
//!   context a handler runs in is read from its message only when the
//!   handler publishes. About 30 ns a message in all on the in-process
//!   broker; see [the cost](crate::telemetry#cost-and-turning-it-off).
//! - **Measured:** on the in-process broker with a no-op raw handler
//!   (`cargo bench -p courier-memory --bench runtime_overhead`, CPU time),
//!   the runtime adds about 110 ns a message to a bare subscribe-and-ack
//!   loop's 110–120 ns at concurrency 1, 160 ns at concurrency 8 and
//!   200 ns at concurrency 16 with 16 keys; it allocates no more blocks
//!   per message than the bare loop at any concurrency
//!   (`cargo bench -p courier-memory --bench runtime_memory` counts them).
//! - **Memory is bounded by the prefetch.** Nothing grows per message: the
//!   broker hands out at most the prefetch, everything else is freed when
//!   its message is settled.
//!
//! # Middleware order
//!
//! For each attempt, from the outside in:
//!
//! 1. the ordering lane and a concurrency slot are held (consumer);
//! 2. the retry loop and the shutdown-deadline cancellation (consumer);
//! 3. a panic catcher around the whole stack (consumer);
//! 4. the layers, in the order they were added with
//!    [`ConsumerBuilder::layer`]: the first added is the outermost, as in
//!    tower's `ServiceBuilder`;
//! 5. when there are layers, a [`CatchPanic`] around the handler
//!    (consumer), so layers see a panic as an ordinary transient failure;
//! 6. the handler.
//!
//! The outcome then flows back out through the layers to the consumer,
//! which retries, dead-letters or acks. A sensible order of layers:
//!
//! ```text
//! .layer(breaker.layer())                  // sees every failure, incl. timeouts
//! .layer(ConcurrencyLimitLayer::new(n))    // waiting for a permit does not eat the timeout
//! .layer(HookLayer::new(idempotency))      // claims before, completes/releases after
//! .layer(TimeoutLayer::new(d))             // innermost: the hook still sees a timeout
//! ```
//!
//! # Prefetch
//!
//! A consumer's prefetch is how many deliveries the broker hands it before
//! it has settled earlier ones. The broker refills it only as settlements
//! come back, so the prefetch has to cover everything in flight during one
//! settlement round trip, not just the messages being handled: on RabbitMQ
//! quorum queues an ack takes effect through the queue's Raft log, several
//! milliseconds. Measured on the RabbitMQ test fixture (2 busy cores,
//! 20,000 × 64 B, median of 5 interleaved rounds, against a lapin
//! consume-and-ack loop with prefetch 256 at about 7,000 msg/s):
//!
//! | prefetch | concurrency 1 | concurrency 16 |
//! |---:|---:|---:|
//! | 16 | 1,405 msg/s | 1,364 msg/s |
//! | 32 | 2,429 msg/s | 2,887 msg/s |
//! | 64 | 4,194 msg/s | 6,585 msg/s |
//! | 128 | 7,585 msg/s | 15,113 msg/s |
//! | 256 | 12,826 msg/s | 28,283 msg/s |
//!
//! With 16 KiB messages (5,000 a run, the lapin loop at 4,500-8,000 msg/s)
//! the same sweep went from 1,189 and 1,258 msg/s at prefetch 16 to 6,427
//! and 11,196 at 256.
//!
//! So the runtime's default is twice the concurrency, at least
//! [`MIN_PREFETCH`] = 256 (the [`Subscription`](crate::Subscription)'s own
//! default too); [`ConsumerBuilder::prefetch`] overrides it. (It was 16
//! while a 256 default stalled the Kafka adapter's consumer group on the
//! Kafka-protocol test broker in 2 of 6 runs of the 10,000-message
//! key-order case: its commits, sent every 100 ms without waiting, piled
//! up behind a broker that took up to 3 s per commit under load, the
//! group's heartbeats waited behind them past the session timeout, and the
//! rejoin that followed did not always complete. The adapter now waits
//! for each commit; with that, 21 of 22 runs passed at 256, and the one
//! stall, at 3,847 messages, came while a full workspace build ran beside
//! it, as a stall at 16 had once before.)
//!
//! What a larger prefetch costs:
//!
//! - **Memory**: up to prefetch × message size per consumer is held in the
//!   client (256 × 16 KiB = 4 MiB); set a lower
//!   [`ConsumerBuilder::prefetch`] for large messages or many consumers.
//! - **Redelivery after a crash**: every delivery handed out and not yet
//!   settled comes back when a consumer dies, up to the prefetch; none is
//!   lost, but that many handlers may run again (idempotent handlers make
//!   this harmless).
//! - **Fairness between competing consumers**: one consumer may hold up to
//!   its prefetch of a group's backlog while another is idle; for a few
//!   slow messages, a prefetch near the concurrency spreads them better.
//!
//! # Examples
//!
//! See [`Consumer`].

mod app;
mod consumer;
mod context;
mod dead_letter;
mod dispatch;
mod error;
#[cfg(test)]
mod future_size;
mod handler;
mod lanes;
pub mod middleware;
mod process;
mod request;
mod responder;
mod resubscribe;
mod retry;
mod shared;
mod shutdown;
mod slots;
mod stats;
mod status;

pub use crate::dead_letter_retry::{DEAD_LETTER_RETRY_MAX_DELAY, DEAD_LETTER_RETRY_MIN_DELAY};
pub use app::{App, RunningApp};
pub use consumer::{
    Consumer, ConsumerBuilder, DEFAULT_CONCURRENCY, DEFAULT_SHUTDOWN_DEADLINE, IntoSubscriber,
    MIN_PREFETCH, RunningConsumer,
};
pub use context::{Envelope, Meta};
pub use error::{CircuitOpen, FailureKind, HandlerError, HandlerResult, Panicked, TimedOut};
pub use handler::{
    BoxHandler, Consume, EnvelopeFn, Handler, RawEnvelopeFn, RawFn, TypedFn, envelope, raw,
    raw_envelope, typed,
};
pub use middleware::{
    CatchPanic, CatchPanicLayer, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer,
    CircuitState, ConcurrencyLimit, ConcurrencyLimitLayer, GuardedByBreaker, Hook, HookLayer,
    Hooked, Layer, Proceed, Timeout, TimeoutLayer,
};
pub use request::Request;
pub use responder::{Responder, responder};
pub use resubscribe::{RESUBSCRIBE_MAX_DELAY, RESUBSCRIBE_MIN_DELAY};
pub use retry::{Delays, RetryPolicy};
pub use shutdown::{ShutdownHandle, signal};
pub use stats::{ConsumerMetrics, ConsumerStats};
pub use status::{ConsumerState, ConsumerStatus};
