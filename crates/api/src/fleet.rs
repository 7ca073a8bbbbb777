//! Calls to the worker nodes: one read with failover (products), or every node at once
//! (transaction status, fleet health). Every call has the configured timeout, so a hung region
//! costs one timeout, never a hung request.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::time::Instant;

/// Function key header of Azure Functions.
pub const KEY_HEADER: &str = "x-functions-key";
/// A node's answer larger than this is refused (a full catalogue is far smaller).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// How much of a failing node's answer is kept for the error message.
const MAX_ERROR_TEXT: usize = 200;

/// Why one node could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// Azure's front end answers 403 "This web app is stopped." (an HTML page) for a stopped
    /// Function App; the page itself says nothing more, so it is not repeated.
    #[error("stopped (403: the app is stopped)")]
    Stopped,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("answered {0}: {1}")]
    Status(u16, String),
    #[error("answered something unreadable: {0}")]
    BadAnswer(String),
}

/// A node's answer to a read: the thing, or "I don't know it" (404).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer<T> {
    Found(T),
    NotFound,
}

/// Whether a request carries the fleet key (`/api/status` is anonymous, so it is sent no secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    FleetKey,
    Anonymous,
}

#[derive(Debug)]
struct Node {
    url: String,
    /// Set when the node last failed; it goes to the back of the failover order until then.
    cooling_until: Mutex<Option<Instant>>,
}

#[derive(Debug)]
pub struct Fleet {
    nodes: Vec<Node>,
    key: Option<String>,
    http: reqwest::Client,
    timeout: Duration,
    cooldown: Duration,
    /// Rotates the first node tried, so reads spread over the fleet.
    next: AtomicUsize,
}

/// The order in which to try `n` nodes: starting at `start` and wrapping, nodes that recently
/// failed (`cooling[i]`) after all the others. Every node appears exactly once, so a read still
/// reaches a cooling node when nothing else answers.
pub fn failover_order(start: usize, cooling: &[bool]) -> Vec<usize> {
    let n = cooling.len();
    let rotated = (0..n).map(|i| (start + i) % n);
    let (healthy, cold): (Vec<usize>, Vec<usize>) = rotated.partition(|&i| !cooling[i]);
    let order: Vec<usize> = healthy.into_iter().chain(cold).collect();
    debug_assert_eq!(order.len(), n);
    order
}

impl Fleet {
    /// `urls` are the nodes' base URLs (no trailing slash needed); `key` their function key.
    pub fn new(
        urls: &[String],
        key: Option<String>,
        timeout: Duration,
        cooldown: Duration,
    ) -> Self {
        assert!(!urls.is_empty(), "a fleet needs at least one node");
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .expect("static reqwest configuration is valid");
        let nodes = urls
            .iter()
            .map(|u| Node {
                url: u.trim_end_matches('/').to_string(),
                cooling_until: Mutex::new(None),
            })
            .collect();
        Self {
            nodes,
            key,
            http,
            timeout,
            cooldown,
            next: AtomicUsize::new(0),
        }
    }

    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.url.as_str())
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Reads `path` from the first node that answers, trying each node at most once. With
    /// `not_found_is_answer`, a 404 is the fleet's answer (all nodes share one warehouse);
    /// otherwise it counts as that node failing. Returns the answering node's URL too.
    pub async fn read<T: DeserializeOwned>(
        &self,
        path: &str,
        not_found_is_answer: bool,
    ) -> Result<(String, Answer<T>), Vec<(String, NodeError)>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len();
        let now = Instant::now();
        let cooling: Vec<bool> = self
            .nodes
            .iter()
            .map(|n| n.cooling_until.lock().unwrap().is_some_and(|t| t > now))
            .collect();
        let mut failures = Vec::new();
        for i in failover_order(start, &cooling) {
            let url = &self.nodes[i].url;
            match self.get(i, path, Auth::FleetKey).await {
                Ok(Answer::NotFound) if !not_found_is_answer => {
                    let e = NodeError::Status(404, format!("{path} not found"));
                    self.mark(i, Err(&e));
                    tracing::warn!(node = %url, "{e}; trying the next node");
                    failures.push((url.clone(), e));
                }
                Ok(answer) => return Ok((url.clone(), answer)),
                Err(e) => {
                    tracing::warn!(node = %url, path, "{e}; trying the next node");
                    failures.push((url.clone(), e));
                }
            }
        }
        Err(failures)
    }

    /// Asks every node for `path` at once; one result per node, in configuration order.
    pub async fn ask_all<T: DeserializeOwned>(
        &self,
        path: &str,
        auth: Auth,
    ) -> Vec<(String, Result<Answer<T>, NodeError>)> {
        let calls = (0..self.nodes.len())
            .map(|i| async move { (self.nodes[i].url.clone(), self.get(i, path, auth).await) });
        futures::future::join_all(calls).await
    }

    /// One GET to node `i`, bounded by the timeout; records the outcome for the failover order.
    async fn get<T: DeserializeOwned>(
        &self,
        i: usize,
        path: &str,
        auth: Auth,
    ) -> Result<Answer<T>, NodeError> {
        let result = self.get_unmarked(i, path, auth).await;
        self.mark(i, result.as_ref().map(|_| ()));
        result
    }

    fn mark(&self, i: usize, outcome: Result<(), &NodeError>) {
        let mut cooling = self.nodes[i].cooling_until.lock().unwrap();
        *cooling = match outcome {
            Ok(()) => None,
            Err(_) => Some(Instant::now() + self.cooldown),
        };
    }

    async fn get_unmarked<T: DeserializeOwned>(
        &self,
        i: usize,
        path: &str,
        auth: Auth,
    ) -> Result<Answer<T>, NodeError> {
        let url = format!("{}{}", self.nodes[i].url, path);
        let mut req = self.http.get(&url).timeout(self.timeout);
        if let (Auth::FleetKey, Some(key)) = (auth, &self.key) {
            req = req.header(KEY_HEADER, key);
        }
        let req = saldo_telemetry::http::inject(req);
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                NodeError::Timeout(self.timeout)
            } else {
                NodeError::Unreachable(error_chain(&e))
            }
        };
        let mut resp = req.send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        // The timeout set on the request also bounds reading the body.
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(NodeError::BadAnswer(format!(
                    "answer larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        match status {
            200 => serde_json::from_slice(&body)
                .map(Answer::Found)
                .map_err(|e| NodeError::BadAnswer(e.to_string())),
            404 => Ok(Answer::NotFound),
            _ => {
                let text: String = String::from_utf8_lossy(&body)
                    .chars()
                    .take(MAX_ERROR_TEXT)
                    .collect();
                if status == 403 && text.to_ascii_lowercase().contains("stopped") {
                    Err(NodeError::Stopped)
                } else {
                    Err(NodeError::Status(status, text))
                }
            }
        }
    }
}

/// reqwest's top-level message ("error sending request") hides the cause; keep the whole chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_order_rotates_and_puts_cooling_nodes_last() {
        assert_eq!(failover_order(0, &[false, false, false]), vec![0, 1, 2]);
        assert_eq!(failover_order(1, &[false, false, false]), vec![1, 2, 0]);
        assert_eq!(failover_order(1, &[false, true, false]), vec![2, 0, 1]);
        assert_eq!(failover_order(2, &[true, true, true]), vec![2, 0, 1]);
        assert_eq!(failover_order(0, &[false]), vec![0]);
    }
}
