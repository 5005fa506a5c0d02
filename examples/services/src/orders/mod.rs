//! The order flow (hybrid): a synchronous stock check over request/reply,
//! then asynchronous reservation and confirmation through the outbox and
//! idempotent consumers. See the [crate docs](crate#the-order-flow).

pub mod api;
pub mod client;
pub mod email;
pub mod events;
pub mod flow;
pub mod inventory;
pub mod load;
pub mod scenario;
pub mod services;
pub mod stock;

pub use flow::{OrderFlow, OrderTopics};
pub use services::OrderServices;
