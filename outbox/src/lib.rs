//! courier-outbox: the transactional outbox. What a service commits to its
//! database and what it publishes to its broker go together: both, or
//! neither.
//!
//! (Crate docs are completed below.)

mod config;
mod error;
mod publish;
mod relay;
mod row;
mod stats;
mod store;
mod table;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use config::RelayConfig;
pub use error::{Error, Result};
pub use relay::{Relay, RelayHandle};
pub use stats::RelayStats;
pub use store::{Backlog, FailedRow};
pub use table::{DEFAULT_TABLE, MAX_TABLE_LEN, TableName};
