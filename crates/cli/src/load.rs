//! Shoppers: the load generator `saldo chaos` and `saldo demo` share (and `saldo bench` follows
//! transactions with). Shoppers buy through the public API as the SPA does: each purchase has
//! its own `Idempotency-Key`, a failed or timed-out POST is retried with the same key (bounded
//! back-off, until a deadline), and a few accepted purchases are submitted once more to check
//! that the API answers with the same transaction. Each purchase is then followed through
//! `GET /api/transactions/{id}` until it is terminal or the deadline passes.
//!
//! Everything is recorded as a [`Purchase`], with times in milliseconds since the run started,
//! so the history can be written as JSON and plotted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use saldo_publish::Publisher;
use saldo_stack::Manifest;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// Upper bound on purchases in flight (placing or being followed) at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// Longest wait between two POSTs of one purchase.
const RETRY_CAP: Duration = Duration::from_secs(5);
/// Errors kept per purchase (the count is kept in full).
const ERRORS_KEPT: usize = 5;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Purchase {
    pub n: usize,
    pub key: String,
    /// The transaction id the API answered (absent if it never answered 202).
    pub transaction: Option<String>,
    /// (product, quantity).
    pub lines: Vec<(u64, i64)>,
    pub posted_ms: u64,
    pub accepted_ms: Option<u64>,
    /// When the client saw it terminal.
    pub terminal_ms: Option<u64>,
    /// `completed` / `rejected` as the API reported it last; `pending` if never terminal.
    pub status: String,
    pub executed_by: Option<String>,
    pub takeover: bool,
    /// POSTs made for it (1 = accepted at the first try).
    pub attempts: u32,
    pub error_count: u32,
    pub errors: Vec<String>,
    /// A second POST with the same key after acceptance: did it name the same transaction?
    pub resubmit_same: Option<bool>,
    /// An answer the API must never give (e.g. 4xx for a valid order).
    pub refused: Option<String>,
}

impl Purchase {
    pub fn latency_ms(&self) -> Option<u64> {
        Some(self.terminal_ms?.saturating_sub(self.accepted_ms?))
    }
    fn error(&mut self, e: String) {
        self.error_count += 1;
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(e);
        }
    }
}

/// The shop's public API, as a shopper's client sees it.
#[derive(Clone)]
pub struct Shop {
    pub http: reqwest::Client,
    pub api: String,
    pub start: Instant,
    /// Status reads made (each costs every node a ledger read: the client's cost, not the
    /// purchase's, which `saldo bench` reports apart).
    pub polls: Arc<std::sync::atomic::AtomicU64>,
    /// First and longest wait between two polls of one transaction (bench polls fast for
    /// exact latency).
    pub poll_first: Duration,
    pub poll_cap: Duration,
}

#[derive(Debug, Clone)]
pub struct TxStatus {
    pub status: String,
    pub executed_by: Option<String>,
    pub takeover: bool,
}

enum Post {
    Accepted(String),
    /// Worth retrying with the same key.
    Retry(String),
    /// The API refused the order for good (4xx): a bug for the orders a shopper makes here.
    Refused(String),
}

impl Shop {
    pub fn new(api: &str) -> Result<Shop> {
        Ok(Shop {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            api: api.trim_end_matches('/').to_string(),
            start: Instant::now(),
            polls: Default::default(),
            poll_first: Duration::from_millis(150),
            poll_cap: Duration::from_millis(1000),
        })
    }

    pub fn local(m: &Manifest) -> Result<Shop> {
        Shop::new(
            &m.api
                .as_ref()
                .context("the stack runs no API; start it with `saldo up`")?
                .url,
        )
    }

    pub fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    async fn post(&self, key: &str, lines: &[(u64, i64)]) -> Post {
        let body = json!({"lines": lines.iter().map(|(id, q)| json!({"id": id, "quantity": q})).collect::<Vec<_>>()});
        let resp = self
            .http
            .post(format!("{}/api/orders", self.api))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await;
        match resp {
            Err(e) => Post::Retry(format!("POST: {e}")),
            Ok(r) if r.status().as_u16() == 202 => match r.json::<Value>().await {
                Ok(v) => match v["transaction"].as_str() {
                    Some(tx) => Post::Accepted(tx.to_string()),
                    None => Post::Refused("202 without a transaction id".into()),
                },
                Err(e) => Post::Retry(format!("202 body: {e}")),
            },
            Ok(r) => {
                let code = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                let text: String = text.chars().take(200).collect();
                if code >= 500 || code == 408 || code == 429 {
                    Post::Retry(format!("{code} {text}"))
                } else {
                    Post::Refused(format!("{code} {text}"))
                }
            }
        }
    }

    /// One status read; `None` when the API did not answer usefully. `?nodes=false`: the
    /// status from the warehouse's marker through one node, not every node's ledger (the
    /// per-node views are for people, and each costs a read).
    pub async fn status(&self, tx: &str) -> Option<TxStatus> {
        self.polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = self
            .http
            .get(format!("{}/api/transactions/{tx}?nodes=false", self.api))
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        Some(TxStatus {
            status: v["status"].as_str()?.to_string(),
            executed_by: v["executedBy"].as_str().map(str::to_string),
            takeover: v["takeover"].as_bool().unwrap_or(false),
        })
    }

    /// Polls until the transaction is terminal or `deadline` passes; the last status seen.
    pub async fn follow(&self, tx: &str, deadline: Instant) -> Option<TxStatus> {
        let mut last = None;
        // Every poll costs two reads (the API's record, the marker): start quick, then back
        // off, so that the shoppers' own polling does not become the load.
        let mut wait = self.poll_first.min(self.poll_cap);
        loop {
            if let Some(s) = self.status(tx).await {
                if s.status != "pending" {
                    return Some(s);
                }
                last = Some(s);
            }
            if Instant::now() > deadline {
                return last;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 3 / 2).min(self.poll_cap);
        }
    }

    /// One shopper's purchase, start to finish: place it (retrying the same key until
    /// `deadline`), maybe resubmit it, and follow it until terminal or `deadline`.
    pub async fn purchase(
        &self,
        n: usize,
        lines: Vec<(u64, i64)>,
        resubmit: bool,
        deadline: Instant,
    ) -> Purchase {
        let key = uuid::Uuid::new_v4().to_string();
        let mut p = Purchase {
            n,
            key: key.clone(),
            transaction: None,
            lines,
            posted_ms: self.ms(),
            accepted_ms: None,
            terminal_ms: None,
            status: "pending".into(),
            executed_by: None,
            takeover: false,
            attempts: 0,
            error_count: 0,
            errors: Vec::new(),
            resubmit_same: None,
            refused: None,
        };
        let mut pauses = retry_pauses();
        let tx = loop {
            p.attempts += 1;
            match self.post(&key, &p.lines).await {
                Post::Accepted(tx) => break Some(tx),
                Post::Refused(e) => {
                    p.refused = Some(e);
                    break None;
                }
                Post::Retry(e) => p.error(e),
            }
            let pause = pauses.next().unwrap_or(RETRY_CAP);
            if Instant::now() + pause > deadline {
                break None;
            }
            tokio::time::sleep(pause).await;
        };
        let Some(tx) = tx else { return p };
        p.accepted_ms = Some(self.ms());
        p.transaction = Some(tx.clone());
        if resubmit {
            // A shopper pressing "buy" again: same key, so the same transaction, never a second.
            if let Post::Accepted(again) = self.post(&key, &p.lines).await {
                p.resubmit_same = Some(again == tx);
            }
        }
        if let Some(s) = self.follow(&tx, deadline).await {
            if s.status != "pending" {
                p.terminal_ms = Some(self.ms());
            }
            p.status = s.status;
            p.executed_by = s.executed_by;
            p.takeover = s.takeover;
        }
        p
    }
}

/// The pauses between a purchase's POSTs: exponential back-off with jitter, so shoppers turned
/// away together do not all come back together (a retry storm would keep an overloaded stack
/// down). Each pause lies between a delay and twice it, the delay doubling from 100 ms to half
/// of [`RETRY_CAP`], so no pause reaches the cap.
fn retry_pauses() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(RETRY_CAP / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Sets `products` (id, quantity) to absolute quantities through the topic, as the warehouse
/// role does, and waits until the transaction is terminal. Returns its id.
pub async fn restock(
    m: &Manifest,
    shop: &Shop,
    tag: &str,
    products: &[(u64, i64)],
) -> Result<String> {
    let topic = m.topic.as_ref().context("the stack runs no topic")?;
    let id = format!("{tag}-restock-{}", uuid::Uuid::new_v4());
    let event = saldo_stack::seed::set_quantities(
        &id,
        &format!("warehouse/products/{tag}"),
        products
            .iter()
            .map(|&(p, q)| (p, 900_000 + p, format!("{tag} item {p}"), q)),
    );
    Publisher::new(topic.endpoint.clone(), topic.publish_auth())
        .publish(&[event])
        .await
        .context("publishing the restock")?;
    let s = shop
        .follow(&id, Instant::now() + Duration::from_secs(120))
        .await;
    match s {
        Some(s) if s.status == "completed" => Ok(id),
        other => anyhow::bail!(
            "restocking did not complete within 120 s (last status {:?})",
            other.map(|s| s.status)
        ),
    }
}

/// Steady load: a purchase every `1 / rate` seconds from now until `until`, each followed until
/// `deadline`. Lines are drawn (seeded) from `products`: one line, 1 to `max_quantity` units.
pub struct Load {
    pub rate: f64,
    pub until: Instant,
    pub deadline: Instant,
    pub products: Vec<u64>,
    pub max_quantity: i64,
    /// Probability that an accepted purchase is submitted once more with the same key.
    pub resubmit: f64,
    pub seed: u64,
}

/// Runs the load; purchases come back in the order they were started. `on_done` sees each as it
/// finishes (for narration).
pub async fn run(
    shop: &Shop,
    load: Load,
    on_done: impl Fn(&Purchase) + Send + Sync + 'static,
) -> Vec<Purchase> {
    let mut rng = StdRng::seed_from_u64(load.seed ^ 0x0005_a1d0_10ad);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let on_done = Arc::new(on_done);
    let mut tasks = tokio::task::JoinSet::new();
    let every = Duration::from_secs_f64(1.0 / load.rate.max(0.01));
    let mut next = Instant::now();
    let mut n = 0;
    while Instant::now() < load.until {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let product = load.products[rng.random_range(0..load.products.len())];
        let quantity = rng.random_range(1..=load.max_quantity.max(1));
        let resubmit = rng.random_bool(load.resubmit.clamp(0.0, 1.0));
        let shop = shop.clone();
        let deadline = load.deadline;
        let on_done = on_done.clone();
        tasks.spawn(async move {
            let p = shop
                .purchase(n, vec![(product, quantity)], resubmit, deadline)
                .await;
            on_done(&p);
            drop(permit);
            p
        });
        n += 1;
        next += every;
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        } else {
            next = now; // fell behind (the stack is slow): do not burst to catch up
        }
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(p) => out.push(p),
            Err(e) => eprintln!("saldo: a shopper task failed: {e}"),
        }
    }
    out.sort_by_key(|p| p.n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_pauses_double_with_jitter_and_never_reach_the_cap() {
        let ms = Duration::from_millis;
        for _ in 0..50 {
            let p: Vec<Duration> = retry_pauses().take(12).collect();
            assert!((ms(100)..ms(200)).contains(&p[0]), "{p:?}");
            assert!((ms(200)..ms(400)).contains(&p[1]), "{p:?}");
            assert!((ms(400)..ms(800)).contains(&p[2]), "{p:?}");
            // Doubling stops at half the cap: from there every pause is in [cap/2, cap).
            assert!((RETRY_CAP / 2..RETRY_CAP).contains(&p[11]), "{p:?}");
            assert!(p.iter().all(|d| *d < RETRY_CAP), "{p:?}");
        }
    }
}
