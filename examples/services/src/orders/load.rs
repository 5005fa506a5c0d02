//! The load run: many orders through the HTTP API at once, then the
//! figures: orders per second, HTTP latency percentiles, and the time
//! until every downstream effect (reservation and mail) is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::client::{OrderClient, PlaceOutcome};
use super::services::OrderServices;
use super::stock;
use crate::db::with_backend;
use crate::error::{Error, Result};

/// Requests in flight at once.
pub const CONCURRENCY: usize = 64;

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Orders placed (201).
    pub orders: usize,
    /// From the first request to the last answer.
    pub http_elapsed: Duration,
    /// Median HTTP latency.
    pub p50: Duration,
    /// 99th percentile HTTP latency.
    pub p99: Duration,
    /// From the first request until every order had its reservation and
    /// its mail.
    pub all_done: Duration,
}

impl LoadReport {
    /// Orders per second through the API.
    pub fn orders_per_second(&self) -> f64 {
        self.orders as f64 / self.http_elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} orders in {:.2} s: {:.0} orders/s, HTTP p50 {:.1} ms, p99 {:.1} ms; every reservation and mail done after {:.2} s",
            self.orders,
            self.http_elapsed.as_secs_f64(),
            self.orders_per_second(),
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.all_done.as_secs_f64()
        )
    }
}

/// Rows of the downstream effects so far: reservations and mails.
const EFFECTS: &str = "SELECT (SELECT COUNT(*) FROM reservations), (SELECT COUNT(*) FROM emails)";

/// Places `orders` orders through the API of `services` (every service in
/// this process), [`CONCURRENCY`] at a time, and waits until the
/// inventory and email services have handled them all.
///
/// # Errors
///
/// [`Error::Unexpected`] when an order is refused or the effects do not
/// all arrive within a minute after the last answer.
pub async fn run(services: &OrderServices, orders: usize) -> Result<LoadReport> {
    let flow = &services.flow;
    let base = services
        .api_url()
        .ok_or_else(|| Error::Unexpected("the API does not run here".into()))?;
    let client = OrderClient::new(base);
    stock::seed(
        flow,
        "load",
        i64::try_from(orders).unwrap_or(i64::MAX / 2) * 10,
    )
    .await?;
    let before = effects(flow).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, next) = (client.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < orders {
                let sent = Instant::now();
                match client.place("load", 1, "load@example.com").await? {
                    PlaceOutcome::Placed(_) => latencies.push(sent.elapsed()),
                    other => return Err(Error::Unexpected(format!("refused: {other:?}"))),
                }
            }
            Ok::<_, Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(orders);
    for worker in workers {
        latencies.extend(
            worker
                .await
                .map_err(|e| Error::Unexpected(format!("worker: {e}")))??,
        );
    }
    let http_elapsed = started.elapsed();
    latencies.sort();
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = (before.0 + orders as i64, before.1 + orders as i64);
    loop {
        let now = effects(flow).await?;
        if now.0 >= expected.0 && now.1 >= expected.1 {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Unexpected(format!(
                "after a minute: {now:?} effects, expected {expected:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    Ok(LoadReport {
        orders: latencies.len(),
        http_elapsed,
        p50: percentile(0.5),
        p99: percentile(0.99),
        all_done: started.elapsed(),
    })
}

async fn effects(flow: &super::flow::OrderFlow) -> Result<(i64, i64)> {
    Ok(with_backend!(&*flow.db, b => sqlx::query_as(EFFECTS).fetch_one(&b.pool).await?))
}
