//! The order API (axum): `POST /orders` asks the stock service
//! synchronously (request/reply through the broker, behind a timeout,
//! retries with backoff and a circuit breaker), then writes the order and
//! its `OrderPlaced` event in one transaction (the outbox); `GET
//! /orders/{id}` shows the order and what the downstream services did.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use courier::Message;
use courier::request::RequestError;
use courier::resilience::{
    BreakerError, CircuitBreaker, CircuitBreakerConfig, CircuitState, Retry, RetryPolicy,
    with_timeout,
};

use super::events::{NewOrder, OrderPlaced, OrderView, Placed, Refused, StockQuery, StockReply};
use super::flow::OrderFlow;
use crate::clock::now_ms;
use crate::db::with_backend;
use crate::flow_trace;
use crate::http;
use crate::timeline::short;

/// How the API guards its call to the stock service.
#[derive(Debug, Clone)]
pub struct StockGuard {
    /// One request's timeout.
    pub request_timeout: Duration,
    /// Retries of a request that timed out or found no responder.
    pub retry: RetryPolicy,
    /// The breaker: opens after this many failed (retried) calls in a row,
    /// and lets a probe through after its cool-down.
    pub breaker: CircuitBreakerConfig,
    /// The bound on the whole guarded call, retries included: past it the
    /// API answers 503 rather than keep its client waiting.
    pub overall: Duration,
}

impl Default for StockGuard {
    fn default() -> Self {
        StockGuard {
            request_timeout: Duration::from_millis(500),
            retry: RetryPolicy::exponential()
                .max_attempts(3)
                .min_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(200)),
            breaker: CircuitBreakerConfig::default()
                .failure_threshold(2)
                .cool_down(Duration::from_secs(1)),
            overall: Duration::from_secs(3),
        }
    }
}

/// The API's state.
#[derive(Debug)]
struct Api {
    flow: OrderFlow,
    guard: StockGuard,
    retry: Retry,
    breaker: CircuitBreaker,
}

/// The API's routes, with their own circuit breaker (returned too, for
/// whoever wants to watch it).
pub fn router(flow: &OrderFlow, guard: StockGuard) -> (Router, CircuitBreaker) {
    let breaker = CircuitBreaker::new(guard.breaker);
    let api = Arc::new(Api {
        flow: flow.clone(),
        retry: Retry::new(guard.retry),
        breaker: breaker.clone(),
        guard,
    });
    let router = Router::new()
        .route("/orders", post(place))
        .route("/orders/{id}", get(show))
        .with_state(api);
    (router, breaker)
}

/// `POST /orders`.
async fn place(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Json(order): Json<NewOrder>,
) -> Response {
    // The flow's trace: the caller's, or a new one started here.
    let trace = http::trace_of(&headers);
    let trace_id = trace.trace_id_hex();
    match trace.scope(api.place(order, trace_id)).await {
        Ok(response) | Err(response) => response,
    }
}

/// The answer to the client, success or not.
type Answer = Result<Response, Response>;

/// The breaker's state as the API shows it.
fn circuit_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half-open",
        _ => "unknown",
    }
}

fn refuse(status: StatusCode, error: impl Into<String>, circuit: Option<CircuitState>) -> Response {
    let circuit = circuit.map(|state| circuit_name(state).to_owned());
    let body = Refused {
        error: error.into(),
        circuit,
    };
    (status, Json(body)).into_response()
}

fn internal(error: impl std::fmt::Display) -> Response {
    refuse(StatusCode::INTERNAL_SERVER_ERROR, error.to_string(), None)
}

impl Api {
    async fn place(&self, order: NewOrder, trace_id: String) -> Answer {
        if order.quantity <= 0 || order.product.is_empty() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "a product and a positive quantity are required",
                None,
            ));
        }
        let order_id = uuid::Uuid::now_v7().to_string();
        let timeline = &self.flow.timeline;
        let stock = self.check_stock(&order_id, &order).await?;
        if !stock.available {
            timeline.note(
                "api",
                format!("409: {} × {} out of stock", order.quantity, order.product),
            );
            return Err(refuse(
                StatusCode::CONFLICT,
                format!("out of stock: {} free", stock.free),
                None,
            ));
        }
        let placed = OrderPlaced {
            order_id: order_id.clone(),
            product: order.product,
            quantity: order.quantity,
            email: order.email,
        };
        let event = Message::from_json(&placed)
            .and_then(|message| Ok(message.with_correlation_id(&order_id)?))
            .map_err(internal)?
            .with_key(&order_id);
        let topic = &self.flow.topics.order_placed;
        let ids = (Some(order_id.clone()), Some(trace_id.clone()));
        with_backend!(&*self.flow.db, b => {
            let mut tx = b.pool.begin().await.map_err(internal)?;
            sqlx::query(INSERT_ORDER)
                .bind(&order_id)
                .bind(&placed.product)
                .bind(placed.quantity)
                .bind(&placed.email)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(internal)?;
            flow_trace::record!(&mut *tx, &order_id, "api", ids).await.map_err(internal)?;
            b.outbox.enqueue(&mut tx, topic, event).await.map_err(internal)?;
            tx.commit().await.map_err(internal)?;
        });
        timeline.note(
            "api",
            format!(
                "201: order {} of {} × {} placed (trace {})",
                short(&order_id),
                placed.quantity,
                placed.product,
                short(&trace_id)
            ),
        );
        Ok((StatusCode::CREATED, Json(Placed { order_id, trace_id })).into_response())
    }

    /// Asks the stock service, guarded; a 503 when it cannot answer.
    async fn check_stock(&self, order_id: &str, order: &NewOrder) -> Result<StockReply, Response> {
        let query = StockQuery {
            order_id: order_id.to_owned(),
            product: order.product.clone(),
            quantity: order.quantity,
        };
        // The request carries the trace this task runs in, as a publish
        // does (written by `request` itself).
        let request = Message::from_json(&query)
            .and_then(|message| Ok(message.with_correlation_id(order_id)?))
            .map_err(internal)?;
        let (topic, timeout) = (&self.flow.topics.stock_query, self.guard.request_timeout);
        let ask = || async {
            let reply = self
                .flow
                .broker
                .request(topic, request.clone(), timeout)
                .await?;
            reply.json::<StockReply>().map_err(RequestError::Codec)
        };
        let guarded = self.breaker.call_if(
            || self.retry.run_if(ask, RequestError::is_retryable),
            RequestError::is_retryable,
        );
        let unavailable = |why: String| {
            let state = self.breaker.state();
            self.flow
                .timeline
                .note("api", format!("503: stock service unavailable ({why})"));
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("stock service unavailable: {why}"),
                Some(state),
            )
        };
        match with_timeout(self.guard.overall, guarded).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(BreakerError::Failed(error))) if !error.is_retryable() => Err(internal(error)),
            Ok(Err(error)) if error.is_open() => Err(unavailable("circuit open".into())),
            Ok(Err(error)) => Err(unavailable(format!(
                "{error}; circuit {}",
                circuit_name(self.breaker.state())
            ))),
            Err(elapsed) => Err(unavailable(elapsed.to_string())),
        }
    }
}

/// Writes the order.
const INSERT_ORDER: &str = "INSERT INTO orders (id, product, quantity, email, created_at_ms)
     VALUES ($1, $2, $3, $4, $5)";
/// Reads it back.
const SELECT_ORDER: &str = "SELECT id, product, quantity, email FROM orders WHERE id = $1";
/// Its reservations.
const SELECT_RESERVATIONS: &str =
    "SELECT outcome FROM reservations WHERE order_id = $1 ORDER BY created_at_ms";
/// Its mails.
const SELECT_EMAILS: &str = "SELECT subject FROM emails WHERE order_id = $1 ORDER BY sent_at_ms";

/// `GET /orders/{id}`.
async fn show(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    match order_view(&api.flow, &id).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => refuse(StatusCode::NOT_FOUND, format!("no order {id}"), None),
        Err(error) => internal(error),
    }
}

/// The order `id` and what the downstream services did, read from the
/// database.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when a query fails.
pub async fn order_view(flow: &OrderFlow, id: &str) -> crate::Result<Option<OrderView>> {
    let (order, reservations, emails) = with_backend!(&*flow.db, b => {
        let order: Option<(String, String, i64, String)> =
            sqlx::query_as(SELECT_ORDER).bind(id).fetch_optional(&b.pool).await?;
        let reservations: Vec<(String,)> =
            sqlx::query_as(SELECT_RESERVATIONS).bind(id).fetch_all(&b.pool).await?;
        let emails: Vec<(String,)> = sqlx::query_as(SELECT_EMAILS).bind(id).fetch_all(&b.pool).await?;
        (order, reservations, emails)
    });
    let Some((order_id, product, quantity, email)) = order else {
        return Ok(None);
    };
    Ok(Some(OrderView {
        order: OrderPlaced {
            order_id,
            product,
            quantity,
            email,
        },
        reservations: reservations.into_iter().map(|(r,)| r).collect(),
        emails: emails.into_iter().map(|(e,)| e).collect(),
        trace: flow_trace::sightings(&flow.db, id).await?,
    }))
}
