//! The loan approval end to end, over HTTP, on the embedded default and
//! on NATS JetStream + PostgreSQL: each scripted application ends as
//! scripted (approved, rejected at each level, dead-lettered with its
//! reason), the credit check retries a flaky bureau, the decisions are
//! persisted, and each flow is one correlation id and one trace.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Setup, count};
use courier_examples::loans::client::LoanClient;
use courier_examples::loans::scenario::SCRIPT;
use courier_examples::loans::services::SERVICES;
use courier_examples::loans::{Level, LoanFlow, LoanServices, LoanTopics};

/// How long an application may take.
const PATIENCE: Duration = Duration::from_secs(60);
/// Credit bureau calls that time out before it answers.
const BUREAU_FAILURES: u32 = 2;

/// What each scripted application must have gone through: the levels
/// that recorded a step and the services that saw its flow.
fn expected_path(status: &str, amount: i64) -> (Vec<&'static str>, BTreeSet<&'static str>) {
    let seen = |levels: &[&'static str]| -> BTreeSet<&'static str> {
        levels.iter().copied().chain(["api", "decisions"]).collect()
    };
    match (status, amount) {
        ("approved", _) => {
            let levels = vec!["credit-check", "risk", "manager"];
            let services = seen(&levels);
            (levels, services)
        }
        ("rejected", 400_000) => (
            vec!["credit-check", "risk"],
            seen(&["credit-check", "risk"]),
        ),
        ("rejected", 200_000) => {
            let levels = vec!["credit-check", "risk", "manager"];
            let services = seen(&levels);
            (levels, services)
        }
        ("rejected", _) => (vec!["credit-check"], seen(&["credit-check"])),
        // Dead-lettered: the credit check failed it, so it recorded no sighting of its own.
        _ => (vec!["credit-check"], seen(&[])),
    }
}

async fn loans_as_scripted(setup: Setup) {
    let flow = LoanFlow::new(setup.broker.clone(), setup.db.clone())
        .topics(LoanTopics::with_prefix(&setup.prefix));
    let services = LoanServices::start(&flow, &SERVICES, "127.0.0.1:0")
        .await
        .expect("services start");
    let client = LoanClient::new(services.api_url().expect("api"));
    flow.bureau_failures
        .store(BUREAU_FAILURES, Ordering::Relaxed);

    let mut submitted = Vec::new();
    for (applicant, amount, income, status) in SCRIPT {
        let accepted = client.submit(applicant, amount, income).await.expect("202");
        submitted.push((accepted, amount, status));
    }
    for (accepted, amount, status) in &submitted {
        let reference = accepted.reference.as_str();
        let view = client
            .wait_decided(reference, PATIENCE, |_| {})
            .await
            .expect("decided");
        assert_eq!(view.status, *status, "{view:?}");
        assert!(view.decided);
        let (levels, services) = expected_path(status, *amount);
        let stepped: Vec<&str> = view
            .steps
            .iter()
            .filter(|step| !step.outcome.ends_with("(retrying)"))
            .map(|step| step.level.as_str())
            .collect();
        assert_eq!(stepped, levels, "{view:?}");
        match *status {
            "approved" => assert_eq!(view.reason, None),
            "dead-lettered" => {
                let reason = view.reason.as_deref().expect("a reason");
                assert!(reason.contains("malformed application"), "{reason}");
            }
            _ => assert!(view.reason.is_some(), "{view:?}"),
        }
        // One flow: one correlation id (the reference) and the API's trace, everywhere.
        let seen: BTreeSet<&str> = view.trace.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(seen, services, "{view:?}");
        assert_eq!(view.trace.len(), services.len(), "{:?}", view.trace);
        for sighting in &view.trace {
            assert_eq!(
                sighting.correlation_id.as_deref(),
                Some(reference),
                "{sighting:?}"
            );
            assert_eq!(
                sighting.trace_id.as_deref(),
                Some(accepted.trace_id.as_str()),
                "{sighting:?}"
            );
        }
    }
    // The bureau's timeouts were retried, not dead-lettered.
    let credit = services
        .level(Level::CreditCheck)
        .expect("credit check runs");
    let stats = credit.metrics().snapshot();
    assert_eq!(stats.retried, u64::from(BUREAU_FAILURES), "{stats:?}");
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert_eq!(flow.bureau_failures.load(Ordering::Relaxed), 0);
    let retried_steps = count(
        &flow.db,
        "SELECT COUNT(*) FROM loan_steps WHERE outcome = $1",
        "the credit bureau timed out (retrying)",
    )
    .await;
    assert!(
        (1..=i64::from(BUREAU_FAILURES)).contains(&retried_steps),
        "{retried_steps}"
    );
    // Decisions persisted: every application has its final status.
    let decided = count(
        &flow.db,
        "SELECT COUNT(*) FROM loans WHERE decided_at_ms IS NOT NULL AND reference <> $1",
        "",
    )
    .await;
    assert_eq!(decided, SCRIPT.len() as i64);
    services.shutdown().await.expect("shutdown");
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_loans_as_scripted() {
    loans_as_scripted(Setup::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres_loans_as_scripted() {
    loans_as_scripted(Setup::nats_postgres().await).await;
}
