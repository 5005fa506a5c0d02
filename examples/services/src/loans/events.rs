//! What the loan approval's levels say to each other, and the HTTP bodies.

use serde::{Deserialize, Serialize};

use crate::flow_trace::Sighting;

/// `POST /loans`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewLoan {
    /// Who asks.
    pub applicant: String,
    /// How much.
    pub amount: i64,
    /// Their yearly income.
    pub income: i64,
}

/// The answer to `POST /loans` (202).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    /// The application's reference number.
    pub reference: String,
    /// The trace id of the flow it started.
    pub trace_id: String,
}

/// The application as it travels from level to level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoanApplication {
    /// Its reference number.
    pub reference: String,
    /// Who asks.
    pub applicant: String,
    /// How much.
    pub amount: i64,
    /// Their yearly income.
    pub income: i64,
}

/// The end of a flow: approved by the last level or rejected by one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoanDecided {
    /// The application.
    pub reference: String,
    /// Approved or not.
    pub approved: bool,
    /// The level that decided.
    pub level: String,
    /// Why.
    pub reason: String,
}

/// One thing a level did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The level (`credit-check`, `risk`, `manager`).
    pub level: String,
    /// What it made of the application, or the failure it retried.
    pub outcome: String,
    /// The delivery attempt it happened on.
    pub attempt: i64,
}

/// `GET /loans/{reference}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoanView {
    /// The reference number.
    pub reference: String,
    /// Who asked.
    pub applicant: String,
    /// How much.
    pub amount: i64,
    /// `received`, `credit checked`, `risk assessed`, then `approved`,
    /// `rejected` or `dead-lettered`.
    pub status: String,
    /// Why it was rejected or dead-lettered.
    pub reason: Option<String>,
    /// Whether the status is final (and persisted as the decision).
    pub decided: bool,
    /// What each level did, in order.
    pub steps: Vec<Step>,
    /// The correlation and trace id each service saw.
    pub trace: Vec<Sighting>,
}
