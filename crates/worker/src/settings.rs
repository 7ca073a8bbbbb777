//! The worker's settings, from the environment (the Function App's app settings).
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SALDO_NODE` | node name (letters, digits, `-`, `_`); names the collections | required |
//! | `SALDO_REGION` | Azure region of the node | the node name |
//! | `SALDO_MONGODB_URI` | MongoDB connection string | required |
//! | `SALDO_DATABASE` | database name | `saldo` |
//! | `SALDO_TOPIC_ENDPOINT`, `SALDO_TOPIC_KEY` | Event Grid topic (see `saldo-publish`) | required / managed identity |
//! | `SALDO_PUBLIC_URL` | this node's base URL as peers see it | `http://127.0.0.1:<port>` |
//! | `SALDO_PEERS` | comma-separated peer base URLs (catch-up bootstrap) | none |
//! | `SALDO_FLEET` | comma-separated names of every node of the fleet, this one included; heartbeats and completions from others are refused | any node (warned) |
//! | `SALDO_MAX_AHEAD_MS` | an event stamped further ahead of this node's clock is refused | 3600000 |
//! | `SALDO_FLEET_KEY` | function key sent to peers as `x-functions-key` | none |
//! | `SALDO_TAKEOVER_MS` | wait per rank before taking over | 10000 |
//! | `SALDO_LIVENESS_MS` | a peer whose stored heartbeat changed within this is live | 15000 |
//! | `SALDO_PEERS_CACHE_MS` | how stale an instance's copy of the region's peer records may be | 1000 |
//! | `SALDO_DB_TIMEOUT_MS` | bound on one database operation, its retries included | 10000 |
//! | `SALDO_CATCHUP_EVERY` | catch up every N sweeps (and at start) | 5 |
//! | `SALDO_STANDALONE_TIMERS` | `1`: run heartbeat and sweep on internal timers (no host) | off |
//! | `SALDO_HEARTBEAT_SCHEDULE`, `SALDO_SWEEP_SCHEDULE` | NCRONTAB (6 fields) for those timers | `*/5 * * * * *`, `*/2 * * * * *` |
//! | `FUNCTIONS_CUSTOMHANDLER_PORT` | port to listen on (set by the host); `--port` overrides | required unless `--port` |

use anyhow::{Context, bail};
use chrono::Duration;

use crate::node::Config;

#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub mongodb_uri: String,
    pub database: String,
    pub fleet_key: Option<String>,
    /// Which nodes' heartbeats and completions are admitted, and the clock bound.
    pub admission: crate::intake::Admission,
    /// Bound on one database operation (`MongoStore::with_timeout`).
    pub db_timeout: std::time::Duration,
    pub standalone_timers: bool,
    pub heartbeat_schedule: String,
    pub sweep_schedule: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn millis(name: &str, default: i64) -> anyhow::Result<Duration> {
    let ms = match var(name) {
        Some(v) => v
            .parse::<i64>()
            .with_context(|| format!("{name} must be a number of milliseconds, got {v:?}"))?,
        None => default,
    };
    if !(1..=86_400_000).contains(&ms) {
        bail!("{name} must be 1..=86400000 ms, got {ms}");
    }
    Ok(Duration::milliseconds(ms))
}

impl Settings {
    /// Reads the settings; `port` is the port this process listens on (for the default URL).
    pub fn from_env(port: u16) -> anyhow::Result<Settings> {
        let node = var("SALDO_NODE").context("SALDO_NODE is not set")?;
        if !saldo_store::valid_node_name(&node) {
            bail!("SALDO_NODE {node:?} must be 1..=60 letters, digits, - or _");
        }
        let region = var("SALDO_REGION").unwrap_or_else(|| node.clone());
        let catch_up_every = match var("SALDO_CATCHUP_EVERY") {
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .context("SALDO_CATCHUP_EVERY must be 1..=10000")?,
            None => 5,
        };
        let config = Config {
            node,
            region,
            public_url: var("SALDO_PUBLIC_URL")
                .unwrap_or_else(|| format!("http://127.0.0.1:{port}"))
                .trim_end_matches('/')
                .to_string(),
            peers: var("SALDO_PEERS")
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().trim_end_matches('/').to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            takeover: millis("SALDO_TAKEOVER_MS", 10_000)?,
            liveness: millis("SALDO_LIVENESS_MS", 15_000)?,
            peers_cache: millis("SALDO_PEERS_CACHE_MS", 1_000)?,
            catch_up_every,
        };
        let fleet = match var("SALDO_FLEET") {
            None => None,
            Some(v) => {
                let names: std::collections::BTreeSet<String> = v
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if let Some(bad) = names.iter().find(|n| !saldo_store::valid_node_name(n)) {
                    bail!(
                        "SALDO_FLEET: {bad:?} is not a node name (1..=60 letters, digits, - or _)"
                    );
                }
                if !names.contains(&config.node) {
                    bail!(
                        "SALDO_FLEET {v:?} must name this node ({:?}) too",
                        config.node
                    );
                }
                Some(names)
            }
        };
        let admission = crate::intake::Admission {
            fleet,
            max_ahead: millis("SALDO_MAX_AHEAD_MS", 3_600_000)?,
        };
        Ok(Settings {
            admission,
            config,
            mongodb_uri: var("SALDO_MONGODB_URI").context("SALDO_MONGODB_URI is not set")?,
            database: var("SALDO_DATABASE").unwrap_or_else(|| "saldo".into()),
            fleet_key: var("SALDO_FLEET_KEY"),
            db_timeout: millis("SALDO_DB_TIMEOUT_MS", 10_000)?
                .to_std()
                .expect("positive"),
            standalone_timers: var("SALDO_STANDALONE_TIMERS").as_deref() == Some("1"),
            heartbeat_schedule: var("SALDO_HEARTBEAT_SCHEDULE")
                .unwrap_or_else(|| "*/5 * * * * *".into()),
            sweep_schedule: var("SALDO_SWEEP_SCHEDULE").unwrap_or_else(|| "*/2 * * * * *".into()),
        })
    }
}
