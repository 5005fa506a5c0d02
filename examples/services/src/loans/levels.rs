//! The approval levels: credit check, risk assessment, manager. Each is a
//! consumer of the previous level's event; it records its step, then
//! publishes the next event (or the decision, when it rejects or is the
//! last) as a follow-up of the message it handled
//! ([`Meta::follow_up`](courier::runtime::Meta::follow_up)): the same
//! correlation id, the causation id set, and, because the handler runs in
//! the message's trace context, the same trace.

use std::sync::atomic::Ordering;

use courier::Message;
use courier::Subscription;
use courier::runtime::{self, Consumer, Envelope, HandlerError, RetryPolicy, RunningConsumer};

use super::events::{LoanApplication, LoanDecided};
use super::flow::{CREDIT_GROUP, LoanFlow, MANAGER_GROUP, RISK_GROUP};
use crate::clock::now_ms;
use crate::db::with_backend;
use crate::flow_trace;

/// One approval level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Level {
    /// Validates the application (a malformed one is dead-lettered) and
    /// asks the (simulated) credit bureau: rejects an amount above ten
    /// times the income.
    CreditCheck,
    /// Rejects an amount above the 250 000 limit.
    Risk,
    /// Approves up to five times the income, rejects above.
    Manager,
}

/// What a level made of an application.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Pass,
    Reject(String),
}

/// The risk limit.
const RISK_LIMIT: i64 = 250_000;

/// Records a step unless the same outcome of the level is there already
/// (a redelivery records nothing twice).
const STEP: &str = "INSERT INTO loan_steps (reference, level, outcome, attempt, at_ms)
     SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (
        SELECT 1 FROM loan_steps WHERE reference = $1 AND level = $2 AND outcome = $3)";

/// Moves the status on, unless a final decision is there.
const STATUS: &str = "UPDATE loans SET status = $2 WHERE reference = $1 AND decided_at_ms IS NULL";

impl Level {
    /// Every level, in order.
    pub const ALL: [Level; 3] = [Level::CreditCheck, Level::Risk, Level::Manager];

    /// The level's name, which is also its service name and consumer group.
    pub fn group(self) -> &'static str {
        match self {
            Level::CreditCheck => CREDIT_GROUP,
            Level::Risk => RISK_GROUP,
            Level::Manager => MANAGER_GROUP,
        }
    }

    /// The topic it consumes.
    fn input(self, flow: &LoanFlow) -> &str {
        match self {
            Level::CreditCheck => &flow.topics.submitted,
            Level::Risk => &flow.topics.credit_checked,
            Level::Manager => &flow.topics.risk_assessed,
        }
    }

    /// The topic a passed application goes to and the status it then
    /// has; `None` for the last level, whose pass is the approval.
    fn next(self, flow: &LoanFlow) -> Option<(&str, &'static str)> {
        match self {
            Level::CreditCheck => Some((&flow.topics.credit_checked, "credit checked")),
            Level::Risk => Some((&flow.topics.risk_assessed, "risk assessed")),
            Level::Manager => None,
        }
    }

    /// The level's rule.
    fn judge(self, flow: &LoanFlow, loan: &LoanApplication) -> Result<Verdict, HandlerError> {
        match self {
            Level::CreditCheck => {
                if loan.applicant.trim().is_empty() || loan.amount <= 0 || loan.income < 0 {
                    return Err(HandlerError::permanent(format!(
                        "malformed application: applicant {:?}, amount {}, income {}",
                        loan.applicant, loan.amount, loan.income
                    )));
                }
                let failing =
                    flow.bureau_failures
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                if failing.is_ok() {
                    return Err(HandlerError::transient("the credit bureau timed out"));
                }
                Ok(if loan.amount > 10 * loan.income {
                    Verdict::Reject("credit check: amount above ten times the income".into())
                } else {
                    Verdict::Pass
                })
            }
            Level::Risk => Ok(if loan.amount > RISK_LIMIT {
                Verdict::Reject(format!("risk: amount above the {RISK_LIMIT} limit"))
            } else {
                Verdict::Pass
            }),
            Level::Manager => Ok(if loan.amount > 5 * loan.income {
                Verdict::Reject("manager: amount above five times the income".into())
            } else {
                Verdict::Pass
            }),
        }
    }
}

/// Starts the consumer of `level`.
///
/// # Errors
///
/// The broker's error when the subscription fails.
pub async fn start(flow: &LoanFlow, level: Level) -> courier::Result<RunningConsumer> {
    let service = flow.clone();
    let handler = runtime::envelope(move |application: Envelope<LoanApplication>| {
        let flow = service.clone();
        async move { handle(&flow, level, application).await }
    });
    let subscription = Subscription::new(level.input(flow), level.group());
    Consumer::builder(&flow.broker, subscription, handler)
        .concurrency(16)
        .retry(
            RetryPolicy::exponential()
                .max_attempts(5)
                .min_delay(std::time::Duration::from_millis(50)),
        )
        .start()
        .await
}

async fn handle(
    flow: &LoanFlow,
    level: Level,
    Envelope { body: loan, meta }: Envelope<LoanApplication>,
) -> Result<(), HandlerError> {
    let name = level.group();
    let attempt = i64::from(meta.attempt());
    let verdict = match level.judge(flow, &loan) {
        Ok(verdict) => verdict,
        Err(failure) => {
            let what = if failure.is_permanent() {
                "dead-lettered"
            } else {
                "retrying"
            };
            let outcome = format!("{} ({what})", failure.reason());
            flow.timeline.note(
                name,
                format!("{}: {outcome}, attempt {attempt}", loan.reference),
            );
            with_backend!(&*flow.db, b => {
                sqlx::query(STEP)
                    .bind(&loan.reference)
                    .bind(name)
                    .bind(&outcome)
                    .bind(attempt)
                    .bind(now_ms())
                    .execute(&b.pool)
                    .await
                    .map_err(HandlerError::transient)?;
            });
            return Err(failure);
        }
    };
    let decision = |approved: bool, reason: &str| {
        let decided = LoanDecided {
            reference: loan.reference.clone(),
            approved,
            level: name.into(),
            reason: reason.to_owned(),
        };
        Message::from_json(&decided).map(|m| (flow.topics.decided.as_str(), m))
    };
    let (outcome, status, next) = match (&verdict, level.next(flow)) {
        (Verdict::Pass, Some((topic, status))) => (
            "passed".to_owned(),
            Some(status),
            Message::from_json(&loan).map(|m| (topic, m)),
        ),
        (Verdict::Pass, None) => ("approved".to_owned(), None, decision(true, "approved")),
        (Verdict::Reject(reason), _) => (reason.clone(), None, decision(false, reason)),
    };
    let (topic, next) = next.map_err(HandlerError::permanent)?;
    with_backend!(&*flow.db, b => {
        let mut tx = b.pool.begin().await.map_err(HandlerError::transient)?;
        sqlx::query(STEP)
            .bind(&loan.reference)
            .bind(name)
            .bind(&outcome)
            .bind(attempt)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(HandlerError::transient)?;
        if let Some(status) = status {
            sqlx::query(STATUS)
                .bind(&loan.reference)
                .bind(status)
                .execute(&mut *tx)
                .await
                .map_err(HandlerError::transient)?;
        }
        flow_trace::record!(&mut *tx, &loan.reference, name, flow_trace::ids(meta.message()))
            .await
            .map_err(HandlerError::transient)?;
        tx.commit().await.map_err(HandlerError::transient)?;
    });
    flow.timeline
        .note(name, format!("{}: {outcome}", loan.reference));
    // Published after the commit: a crash in between publishes it on the
    // redelivery (at least once), and the step is not recorded twice.
    flow.broker.publish(topic, meta.follow_up(next)).await?;
    Ok(())
}
