//! The scripted scenario `loan-approval` runs on start: applications that
//! end at each level, a transient credit bureau failure that is retried,
//! and a malformed application that is dead-lettered.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::client::LoanClient;
use super::services::LoanServices;
use crate::error::{Error, Result};

/// How long an application may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// The scripted applications: applicant, amount, income, and the status
/// each must end in.
pub const SCRIPT: [(&str, i64, i64, &str); 5] = [
    ("Ada", 20_000, 60_000, "approved"),
    ("Bob", 400_000, 50_000, "rejected"), // risk: above the 250 000 limit
    ("Cy", 200_000, 30_000, "rejected"),  // manager: above five times the income
    ("Dee", 150_000, 10_000, "rejected"), // credit check: above ten times the income
    ("Eve", -5, 40_000, "dead-lettered"), // malformed: a negative amount
];

/// Runs the scenario against `services` (every service in this process);
/// the credit bureau fails the first two calls.
///
/// # Errors
///
/// [`Error::Unexpected`] when an application does not end as scripted;
/// the HTTP client's errors.
pub async fn run(services: &LoanServices) -> Result<()> {
    let flow = &services.flow;
    let timeline = flow.timeline.clone();
    let client = LoanClient::new(
        services
            .api_url()
            .ok_or_else(|| Error::Unexpected("the API does not run here".into()))?,
    );
    flow.bureau_failures.store(2, Ordering::Relaxed);
    timeline.note("client", "the credit bureau will time out twice");
    let mut submitted = Vec::new();
    for (applicant, amount, income, expected) in SCRIPT {
        timeline.note(
            "client",
            format!("POST /loans {applicant} asks {amount} on an income of {income}"),
        );
        let accepted = client.submit(applicant, amount, income).await?;
        submitted.push((accepted.reference, expected));
    }
    for (reference, expected) in submitted {
        let view = client
            .wait_decided(&reference, PATIENCE, |view| {
                timeline.note("client", format!("GET /loans/{reference}: {}", view.status));
            })
            .await?;
        if view.status != expected {
            return Err(Error::Unexpected(format!(
                "{reference}: expected {expected}, got {view:?}"
            )));
        }
        let traces: std::collections::BTreeSet<_> =
            view.trace.iter().map(|s| &s.trace_id).collect();
        timeline.note(
            "client",
            format!(
                "{reference}: {} ({}); {} steps, {} services, {} trace",
                view.status,
                view.reason.as_deref().unwrap_or("all levels passed"),
                view.steps.len(),
                view.trace.len(),
                traces.len()
            ),
        );
    }
    Ok(())
}
