//! What each service saw of a flow: its correlation id and its trace id,
//! read from the message it handled (`traceparent` header), so a test and
//! `GET` can check that one flow is one correlation and one trace.

use courier::Message;
use courier::telemetry::TraceContext;

/// The correlation id and trace id a message carries, as
/// the `record!` macro takes them.
pub fn ids(message: &Message) -> (Option<String>, Option<String>) {
    (
        message.correlation_id().map(str::to_owned),
        trace_id_of(message),
    )
}

/// The trace id (32 hex digits) a message carries, if any.
pub fn trace_id_of(message: &Message) -> Option<String> {
    TraceContext::from_message(message).map(|context| context.trace_id_hex())
}

/// The statement recording one sighting.
pub(crate) const INSERT: &str = "INSERT INTO flow_trace (flow, service, correlation_id, trace_id, at_ms) VALUES ($1, $2, $3, $4, $5)";

/// The sightings of a flow, oldest first.
pub(crate) const SELECT: &str = "SELECT service, correlation_id, trace_id FROM flow_trace WHERE flow = $1 ORDER BY at_ms, service";

/// One service's sighting of a flow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sighting {
    /// The service (`api`, `stock`, `inventory`, ...).
    pub service: String,
    /// The correlation id of the message it handled.
    pub correlation_id: Option<String>,
    /// The trace id of the message it handled.
    pub trace_id: Option<String>,
}

/// Records that `service` saw `flow` with these ids, inside the caller's
/// transaction or on the pool (`$executor`); see [`ids`].
macro_rules! record {
    ($executor:expr, $flow:expr, $service:expr, $ids:expr) => {{
        let (correlation_id, trace_id): (Option<String>, Option<String>) = $ids;
        sqlx::query($crate::flow_trace::INSERT)
            .bind($flow)
            .bind($service)
            .bind(correlation_id)
            .bind(trace_id)
            .bind($crate::clock::now_ms())
            .execute($executor)
    }};
}
pub(crate) use record;

/// The sightings of `flow`.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the query fails.
pub async fn sightings(db: &crate::Database, flow: &str) -> crate::Result<Vec<Sighting>> {
    let rows: Vec<(String, Option<String>, Option<String>)> = crate::db::with_backend!(db, b => sqlx::query_as(SELECT).bind(flow).fetch_all(&b.pool).await?);
    Ok(rows
        .into_iter()
        .map(|(service, correlation_id, trace_id)| Sighting {
            service,
            correlation_id,
            trace_id,
        })
        .collect())
}
