//! The loan approval (asynchronous): an application goes through credit
//! check, risk and manager, each a consumer publishing the next event as
//! a follow-up. See the [crate docs](crate#the-loan-approval).

pub mod api;
pub mod client;
pub mod decisions;
pub mod events;
pub mod flow;
pub mod levels;
pub mod scenario;
pub mod services;

pub use flow::{LoanFlow, LoanTopics};
pub use levels::Level;
pub use services::LoanServices;
