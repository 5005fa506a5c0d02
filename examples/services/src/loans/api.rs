//! The loan API (axum): `POST /loans` writes the application and its
//! `submitted` event in one transaction (the outbox) and answers 202 at
//! once with the reference number; `GET /loans/{reference}` shows where
//! the application is.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use courier::Message;

use super::events::{Accepted, LoanApplication, LoanView, NewLoan, Step};
use super::flow::LoanFlow;
use crate::clock::now_ms;
use crate::db::with_backend;
use crate::flow_trace;
use crate::http;

/// Writes the application.
const INSERT_LOAN: &str = "INSERT INTO loans (reference, applicant, amount, status, created_at_ms)
     VALUES ($1, $2, $3, 'received', $4)";
/// Reads it back.
const SELECT_LOAN: &str = "SELECT reference, applicant, amount, status, reason, decided_at_ms FROM loans WHERE reference = $1";
/// Its steps.
const SELECT_STEPS: &str =
    "SELECT level, outcome, attempt FROM loan_steps WHERE reference = $1 ORDER BY id";

/// The API's routes.
pub fn router(flow: &LoanFlow) -> Router {
    Router::new()
        .route("/loans", post(submit))
        .route("/loans/{reference}", get(show))
        .with_state(Arc::new(flow.clone()))
}

fn error(status: StatusCode, error: impl std::fmt::Display) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": error.to_string() })),
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, e)
}

/// `POST /loans`: 202 with the reference; nothing is checked here but the
/// body's shape (the credit check validates, and dead-letters what is
/// malformed).
async fn submit(
    State(flow): State<Arc<LoanFlow>>,
    headers: HeaderMap,
    Json(loan): Json<NewLoan>,
) -> Response {
    let trace = http::trace_of(&headers);
    let trace_id = trace.trace_id_hex();
    match trace.scope(accept(&flow, loan, trace_id)).await {
        Ok(response) | Err(response) => response,
    }
}

async fn accept(flow: &LoanFlow, loan: NewLoan, trace_id: String) -> Result<Response, Response> {
    let reference =
        format!("LN-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]).to_uppercase();
    let application = LoanApplication {
        reference: reference.clone(),
        applicant: loan.applicant,
        amount: loan.amount,
        income: loan.income,
    };
    let event = Message::from_json(&application)
        .and_then(|message| Ok(message.with_correlation_id(&reference)?))
        .map_err(internal)?
        .with_key(&reference);
    let ids = (Some(reference.clone()), Some(trace_id.clone()));
    with_backend!(&*flow.db, b => {
        let mut tx = b.pool.begin().await.map_err(internal)?;
        sqlx::query(INSERT_LOAN)
            .bind(&reference)
            .bind(&application.applicant)
            .bind(application.amount)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(internal)?;
        flow_trace::record!(&mut *tx, &reference, "api", ids).await.map_err(internal)?;
        b.outbox.enqueue(&mut tx, &flow.topics.submitted, event).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
    });
    flow.timeline.note(
        "api",
        format!(
            "202: {reference} ({} asks {})",
            application.applicant, application.amount
        ),
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            reference,
            trace_id,
        }),
    )
        .into_response())
}

/// `GET /loans/{reference}`.
async fn show(State(flow): State<Arc<LoanFlow>>, Path(reference): Path<String>) -> Response {
    match loan_view(&flow, &reference).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no loan {reference}")),
        Err(e) => internal(e),
    }
}

/// The application `reference` with its status, steps and trace.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when a query fails.
pub async fn loan_view(flow: &LoanFlow, reference: &str) -> crate::Result<Option<LoanView>> {
    type LoanRow = (String, String, i64, String, Option<String>, Option<i64>);
    let (loan, steps) = with_backend!(&*flow.db, b => {
        let loan: Option<LoanRow> = sqlx::query_as(SELECT_LOAN).bind(reference).fetch_optional(&b.pool).await?;
        let steps: Vec<(String, String, i64)> =
            sqlx::query_as(SELECT_STEPS).bind(reference).fetch_all(&b.pool).await?;
        (loan, steps)
    });
    let Some((reference, applicant, amount, status, reason, decided_at)) = loan else {
        return Ok(None);
    };
    Ok(Some(LoanView {
        trace: flow_trace::sightings(&flow.db, &reference).await?,
        reference,
        applicant,
        amount,
        status,
        reason,
        decided: decided_at.is_some(),
        steps: steps
            .into_iter()
            .map(|(level, outcome, attempt)| Step {
                level,
                outcome,
                attempt,
            })
            .collect(),
    }))
}
