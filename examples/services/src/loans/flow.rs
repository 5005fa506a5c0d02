//! What every service of the loan approval shares.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use courier::Broker;

use crate::db::Database;
use crate::timeline::Timeline;
use crate::topology;

/// The credit check's consumer group.
pub const CREDIT_GROUP: &str = "credit-check";
/// The risk assessment's consumer group.
pub const RISK_GROUP: &str = "risk";
/// The manager's consumer group.
pub const MANAGER_GROUP: &str = "manager";
/// The group that records decisions and dead letters.
pub const DECISIONS_GROUP: &str = "loan-status";

/// The loan approval's topics; a prefix keeps runs apart on a shared broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoanTopics {
    /// New applications, from the API's outbox.
    pub submitted: String,
    /// Where the credit check dead-letters malformed applications.
    pub submitted_dead_letters: String,
    /// Applications the credit check passed.
    pub credit_checked: String,
    /// Applications the risk assessment passed.
    pub risk_assessed: String,
    /// Final decisions.
    pub decided: String,
}

impl LoanTopics {
    /// `{prefix}loans.submitted`, ...
    pub fn with_prefix(prefix: &str) -> Self {
        let submitted = format!("{prefix}loans.submitted");
        LoanTopics {
            submitted_dead_letters: courier::delivery::default_dead_letter_topic(&submitted),
            submitted,
            credit_checked: format!("{prefix}loans.credit-checked"),
            risk_assessed: format!("{prefix}loans.risk-assessed"),
            decided: format!("{prefix}loans.decided"),
        }
    }
}

impl Default for LoanTopics {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

/// The handles every service of the flow needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LoanFlow {
    /// The broker, any adapter.
    pub broker: Broker,
    /// The database with its outbox.
    pub db: Arc<Database>,
    /// The topic names.
    pub topics: LoanTopics,
    /// Where services say what they did.
    pub timeline: Timeline,
    /// How many credit bureau calls are still to fail (a transient fault
    /// the credit check retries through).
    pub bureau_failures: Arc<AtomicU32>,
}

impl LoanFlow {
    /// The flow on `broker` and `db`, default topics, silent, no faults.
    pub fn new(broker: Broker, db: Arc<Database>) -> Self {
        LoanFlow {
            broker,
            db,
            topics: LoanTopics::default(),
            timeline: Timeline::silent(),
            bureau_failures: Arc::default(),
        }
    }

    /// With other topic names.
    pub fn topics(mut self, topics: LoanTopics) -> Self {
        self.topics = topics;
        self
    }

    /// Printing to `timeline`.
    pub fn timeline(mut self, timeline: Timeline) -> Self {
        self.timeline = timeline;
        self
    }

    /// Declares every level's subscription, so that events published
    /// while a level is down wait for it (idempotent; every service calls
    /// it at start).
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn provision(&self) -> courier::Result<()> {
        let t = &self.topics;
        let subscriptions = [
            (t.submitted.as_str(), CREDIT_GROUP),
            (&t.credit_checked, RISK_GROUP),
            (&t.risk_assessed, MANAGER_GROUP),
            (&t.decided, DECISIONS_GROUP),
            (&t.submitted_dead_letters, DECISIONS_GROUP),
        ];
        topology::provision(&self.broker, subscriptions).await
    }
}
