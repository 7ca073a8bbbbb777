//! Saldo's shop API: the Function App behind the Static Web App.
//!
//! Reads (`/api/products`) are answered by a live worker node, with failover inside the request.
//! Writes (`POST /api/orders`, `PUT /api/products/{id}`) become one `recordUpdated` command on the
//! Event Grid topic, keyed by the client's `Idempotency-Key` so a retry never buys twice.
//! `GET /api/transactions/{id}` and `GET /api/nodes` ask every node at once and combine the answers.
//!
//! Layout: [`commands`] and [`aggregate`] are rules without I/O; [`fleet`] (worker nodes),
//! [`idempotency`] (MongoDB) and the publisher are the adapters; [`routes`] wires them to HTTP.

pub mod aggregate;
pub mod commands;
pub mod error;
pub mod fleet;
pub mod idempotency;
pub mod principal;
pub mod reconcile;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use saldo_publish::Publisher;

pub use routes::{app, openapi};

/// The API's settings; each has an environment variable (the Functions host passes app settings
/// as environment) and a flag for running the binary alone. The topic's settings
/// (`SALDO_TOPIC_ENDPOINT`, `SALDO_TOPIC_KEY` or the managed identity) are read by
/// [`Publisher::from_env`].
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Worker nodes' base URLs, comma-separated.
    #[arg(long, env = "SALDO_NODES", value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// Function key for calling the workers (`x-functions-key`).
    #[arg(long, env = "SALDO_FLEET_KEY", hide_env_values = true)]
    pub fleet_key: Option<String>,
    #[arg(long, env = "SALDO_MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: String,
    #[arg(long, env = "SALDO_DATABASE", default_value = "saldo")]
    pub database: String,
    /// Bound on each call to a node, in milliseconds.
    #[arg(long, env = "SALDO_NODE_TIMEOUT_MS", default_value_t = 2000)]
    pub node_timeout_ms: u64,
    /// How long a node that failed goes to the back of the failover order, in milliseconds.
    #[arg(long, env = "SALDO_NODE_COOLDOWN_MS", default_value_t = 10_000)]
    pub node_cooldown_ms: u64,
    /// Bound on reaching the database, in milliseconds.
    #[arg(long, env = "SALDO_DB_TIMEOUT_MS", default_value_t = 3000)]
    pub db_timeout_ms: u64,
    #[command(flatten)]
    pub reconcile: reconcile::Settings,
}

impl Settings {
    /// The node URLs without blanks or trailing slashes; at least one is required.
    pub fn node_urls(&self) -> anyhow::Result<Vec<String>> {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        anyhow::ensure!(!urls.is_empty(), "SALDO_NODES names no worker node");
        for u in &urls {
            anyhow::ensure!(
                u.starts_with("http://") || u.starts_with("https://"),
                "SALDO_NODES entry {u:?} is not an http(s) URL"
            );
        }
        Ok(urls)
    }
}

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub fleet: Arc<fleet::Fleet>,
    pub publisher: Publisher,
    pub store: idempotency::IdempotencyStore,
    pub reconciler: Arc<reconcile::Reconciler>,
}

impl AppState {
    pub async fn new(settings: &Settings, publisher: Publisher) -> anyhow::Result<Self> {
        let fleet = fleet::Fleet::new(
            &settings.node_urls()?,
            settings.fleet_key.clone().filter(|k| !k.is_empty()),
            Duration::from_millis(settings.node_timeout_ms),
            Duration::from_millis(settings.node_cooldown_ms),
        );
        let store = idempotency::IdempotencyStore::connect(
            &settings.mongodb_uri,
            &settings.database,
            Duration::from_millis(settings.db_timeout_ms),
        )
        .await?;
        let reconciler = reconcile::Reconciler::new(
            store.documents(),
            settings.reconcile.clone(),
            settings.fleet_key.clone().filter(|k| !k.is_empty()),
        )?;
        Ok(Self {
            fleet: Arc::new(fleet),
            publisher,
            store,
            reconciler: Arc::new(reconciler),
        })
    }
}
