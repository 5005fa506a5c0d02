//! An HTTP client of the loan API, for the scenario and the tests.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::events::{Accepted, LoanView, NewLoan};
use crate::error::{Error, Result};

/// A client of one loan API.
#[derive(Debug, Clone)]
pub struct LoanClient {
    http: reqwest::Client,
    base: String,
}

impl LoanClient {
    /// A client of the API at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: impl Into<String>) -> Self {
        LoanClient {
            http: reqwest::Client::new(),
            base: base.into(),
        }
    }

    /// `POST /loans`, expecting 202.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] when the call fails, [`Error::Unexpected`] for
    /// another status.
    pub async fn submit(&self, applicant: &str, amount: i64, income: i64) -> Result<Accepted> {
        let loan = NewLoan {
            applicant: applicant.into(),
            amount,
            income,
        };
        let response = self
            .http
            .post(format!("{}/loans", self.base))
            .json(&loan)
            .send()
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(Error::Unexpected(format!(
                "POST /loans: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            )));
        }
        Ok(response.json().await?)
    }

    /// `GET /loans/{reference}`; `None` for 404.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] when the call or its body fails.
    pub async fn loan(&self, reference: &str) -> Result<Option<LoanView>> {
        let response = self
            .http
            .get(format!("{}/loans/{reference}", self.base))
            .send()
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(response.error_for_status()?.json().await?))
    }

    /// Polls `GET /loans/{reference}` until the status is final, calling
    /// `on_change` with each new status seen; gives up after `patience`.
    ///
    /// # Errors
    ///
    /// [`Error::Unexpected`] with the last view when time runs out.
    pub async fn wait_decided(
        &self,
        reference: &str,
        patience: Duration,
        mut on_change: impl FnMut(&LoanView),
    ) -> Result<LoanView> {
        let deadline = Instant::now() + patience;
        let mut last_status = String::new();
        loop {
            let view = self.loan(reference).await?;
            if let Some(view) = &view {
                if view.status != last_status {
                    last_status.clone_from(&view.status);
                    on_change(view);
                }
                if view.decided {
                    return Ok(view.clone());
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Unexpected(format!(
                    "loan {reference} not decided within {patience:?}: {view:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
