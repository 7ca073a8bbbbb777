//! Event Grid publisher shared by the API and the workers.
//!
//! The same code publishes to the local emulator (topic key) and to Azure (Entra token from the
//! managed identity); which one is chosen by configuration, never by the caller.

use saldo_core::events::EventGridEvent;
use serde::Serialize;

/// How the publisher proves it may send to the topic.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `aeg-sas-key: <key>` (local emulator, or a topic with local auth on).
    Key(String),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The topic answered, but refused the events (4xx). Retrying the same events will not help.
    #[error("topic refused the events ({status}): {body}")]
    Rejected { status: u16, body: String },
    /// The topic could not be reached or answered 5xx/429. Retry later.
    #[error("topic unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone)]
pub struct Publisher {
    endpoint: String,
    auth: Auth,
    http: reqwest::Client,
}

impl Publisher {
    /// `endpoint` is the topic endpoint, e.g. `http://127.0.0.1:7000/api/events`.
    pub fn new(endpoint: impl Into<String>, auth: Auth) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("static reqwest configuration is valid");
        Self { endpoint: endpoint.into(), auth, http }
    }

    /// Publishes a batch of events in one request.
    pub async fn publish<T: Serialize>(
        &self,
        events: &[EventGridEvent<T>],
    ) -> Result<(), PublishError> {
        let mut req = self
            .http
            .post(&self.endpoint)
            .query(&[("api-version", "2018-01-01")])
            .json(events);
        match &self.auth {
            Auth::Key(k) => req = req.header("aeg-sas-key", k),
        }
        let resp = req.send().await.map_err(|e| PublishError::Unavailable(e.to_string()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
            Err(PublishError::Rejected { status: status.as_u16(), body })
        } else {
            Err(PublishError::Unavailable(format!("{status}: {body}")))
        }
    }
}
