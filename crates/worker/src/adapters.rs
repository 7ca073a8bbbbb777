//! The real-world implementations of the node's ports: the Event Grid publisher as its bus, and
//! an HTTP client for its peers.

use std::time::Duration;

use saldo_core::events::EventGridEvent;
use saldo_core::views::{LedgerPage, NodeStatusView};
use saldo_publish::Publisher;
use serde_json::Value;

use crate::node::{Bus, BusError, PeerClient, PeerError, Probe};

impl Bus for Publisher {
    async fn publish(&self, events: Vec<EventGridEvent<Value>>) -> Result<(), BusError> {
        Publisher::publish(self, &events)
            .await
            .map_err(|e| BusError::caused_by(e.to_string(), e))
    }
}

/// Calls peers' functions (`/api/status`, `/api/ledger`) with the fleet's function key.
#[derive(Clone)]
pub struct HttpPeers {
    http: reqwest::Client,
    key: Option<String>,
    timeout: Duration,
}

impl HttpPeers {
    /// `key`: sent as `x-functions-key` (peers' `ledger` function has auth level `function`).
    pub fn new(key: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("static reqwest configuration is valid");
        HttpPeers {
            http,
            key,
            timeout: Duration::from_secs(10),
        }
    }

    /// Bounds each request to a peer (catch-up's status and ledger pages). The worker sets it
    /// to the takeover deadline: a paused peer (SIGSTOP, a frozen machine) accepts the
    /// connection and answers nothing, and waiting out the default 10 s held the sweep, and
    /// with it every takeover waiting for the next sweep.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, url: String) -> Result<T, PeerError> {
        let mut req = self.http.get(&url).timeout(self.timeout);
        if let Some(k) = &self.key {
            req = req.header("x-functions-key", k);
        }
        let resp = saldo_telemetry::http::send(req)
            .await
            .map_err(|e| PeerError::caused_by(format!("GET {url}: {e}"), e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(PeerError::new(format!(
                "GET {url}: {status}: {}",
                body.chars().take(200).collect::<String>()
            )));
        }
        resp.json()
            .await
            .map_err(|e| PeerError::caused_by(format!("GET {url}: unreadable answer: {e}"), e))
    }
}

impl PeerClient for HttpPeers {
    /// `GET /api/status` (anonymous): 403 is a stopped app ("This web app is stopped.", from
    /// Azure's front end and from the local host), a refused connection is no process at all;
    /// both are [`Probe::Down`]. A timeout is [`Probe::Unknown`]: a paused or slow process may
    /// still be executing.
    async fn probe(&self, url: &str, within: Duration) -> Probe {
        let req = self
            .http
            .get(format!("{}/api/status", url.trim_end_matches('/')))
            .timeout(within);
        match req.send().await {
            Ok(r) if r.status() == reqwest::StatusCode::FORBIDDEN => Probe::Down,
            Ok(r) if r.status().is_success() => Probe::Up,
            Ok(_) => Probe::Unknown,
            Err(e) if e.is_connect() && !e.is_timeout() => Probe::Down,
            Err(_) => Probe::Unknown,
        }
    }

    /// `GET /api/ledger/{transaction}` with the fleet's key: 200 is [`Probe::Up`], 404 (the
    /// worker's "not in the ledger"; the route itself always exists) [`Probe::Lacks`], 403
    /// and a refused connection [`Probe::Down`] as for [`PeerClient::probe`], anything else
    /// [`Probe::Unknown`].
    async fn probe_for(&self, url: &str, transaction: &str, within: Duration) -> Probe {
        // A transaction id may hold any printable character: one escaped path segment.
        let Ok(mut at) = reqwest::Url::parse(url) else {
            return Probe::Unknown;
        };
        let Ok(mut path) = at.path_segments_mut() else {
            return Probe::Unknown;
        };
        path.pop_if_empty().extend(["api", "ledger", transaction]);
        drop(path);
        let mut req = self.http.get(at).timeout(within);
        if let Some(k) = &self.key {
            req = req.header("x-functions-key", k);
        }
        match req.send().await {
            Ok(r) if r.status() == reqwest::StatusCode::FORBIDDEN => Probe::Down,
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Probe::Lacks,
            Ok(r) if r.status().is_success() => Probe::Up,
            Ok(_) => Probe::Unknown,
            Err(e) if e.is_connect() && !e.is_timeout() => Probe::Down,
            Err(_) => Probe::Unknown,
        }
    }

    async fn status(&self, url: &str) -> Result<NodeStatusView, PeerError> {
        self.get(format!("{}/api/status", url.trim_end_matches('/')))
            .await
    }

    async fn ledger(&self, url: &str, after: u64, limit: usize) -> Result<LedgerPage, PeerError> {
        self.get(format!(
            "{}/api/ledger?after={after}&limit={limit}",
            url.trim_end_matches('/')
        ))
        .await
    }
}
