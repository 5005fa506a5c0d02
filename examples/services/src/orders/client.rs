//! An HTTP client of the order API, for the scenario, the load run and
//! the tests.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::events::{NewOrder, OrderView, Placed, Refused};
use crate::error::{Error, Result};

/// What `POST /orders` answered.
#[derive(Debug, Clone)]
pub enum PlaceOutcome {
    /// 201.
    Placed(Placed),
    /// Any other status, with its body.
    Refused(StatusCode, Refused),
}

impl PlaceOutcome {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            PlaceOutcome::Placed(_) => StatusCode::CREATED,
            PlaceOutcome::Refused(status, _) => *status,
        }
    }
}

/// A client of one order API.
#[derive(Debug, Clone)]
pub struct OrderClient {
    http: reqwest::Client,
    base: String,
}

impl OrderClient {
    /// A client of the API at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: impl Into<String>) -> Self {
        OrderClient {
            http: reqwest::Client::new(),
            base: base.into(),
        }
    }

    /// `POST /orders`.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] when the call or its body fails.
    pub async fn place(&self, product: &str, quantity: i64, email: &str) -> Result<PlaceOutcome> {
        let order = NewOrder {
            product: product.into(),
            quantity,
            email: email.into(),
        };
        let response = self
            .http
            .post(format!("{}/orders", self.base))
            .json(&order)
            .send()
            .await?;
        let status = response.status();
        if status == StatusCode::CREATED {
            Ok(PlaceOutcome::Placed(response.json().await?))
        } else {
            Ok(PlaceOutcome::Refused(status, response.json().await?))
        }
    }

    /// `GET /orders/{id}`; `None` for 404.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] when the call or its body fails.
    pub async fn order(&self, id: &str) -> Result<Option<OrderView>> {
        let response = self
            .http
            .get(format!("{}/orders/{id}", self.base))
            .send()
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(response.error_for_status()?.json().await?))
    }

    /// Polls `GET /orders/{id}` until the inventory and email services have
    /// both handled the order, or `patience` has passed.
    ///
    /// # Errors
    ///
    /// [`Error::Unexpected`] with the last view when time runs out.
    pub async fn wait_done(&self, id: &str, patience: Duration) -> Result<OrderView> {
        let deadline = Instant::now() + patience;
        loop {
            let view = self.order(id).await?;
            if let Some(view) = &view
                && !view.reservations.is_empty()
                && !view.emails.is_empty()
            {
                return Ok(view.clone());
            }
            if Instant::now() > deadline {
                return Err(Error::Unexpected(format!(
                    "order {id} not handled within {patience:?}: {view:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
