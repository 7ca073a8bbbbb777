//! `.saldo/stack.json`: the machine-readable description of a running stack, so that scripts,
//! `saldo status` and tests can find every endpoint and local-only key. Parts that are not running
//! are absent.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// The stack's state folder (logs, data, dead letters).
    pub root: PathBuf,
    /// Process id of the supervising `saldo up`.
    pub pid: u32,
    /// Every component process; each leads its own process group (its children are in it).
    #[serde(default)]
    pub processes: Vec<ProcessEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb: Option<MongoEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<TopicEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spa: Option<SpaEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessEntry {
    pub name: String,
    pub pid: i32,
    pub log: PathBuf,
    /// How often the supervisor of `saldo up` started it again after it died.
    #[serde(default)]
    pub restarts: u32,
    /// How it last ended on its own, if it ever did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<crate::supervisor::Exit>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MongoEntry {
    pub uri: String,
    pub database: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicEntry {
    /// Publishing endpoint (`.../api/events`).
    pub endpoint: String,
    /// Local-only topic key.
    pub key: String,
    /// Base URL of the management API (`PUT /subscriptions/{name}`).
    pub management: String,
    /// Where dead-lettered events are written.
    pub deadletter: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEntry {
    pub name: String,
    pub region: String,
    pub url: String,
    pub function_key: String,
    pub master_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiEntry {
    pub url: String,
    pub master_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpaEntry {
    pub url: String,
}

impl Manifest {
    pub fn path(root: &Path) -> PathBuf {
        root.join("stack.json")
    }

    pub fn load(root: &Path) -> Result<Self> {
        let path = Self::path(root);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no stack manifest at {} (is a stack running? start one with `saldo up`)",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid manifest", path.display()))
    }

    /// Writes atomically (temp file + rename) so a reader never sees half a manifest.
    pub fn save(&self) -> Result<()> {
        let path = Self::path(&self.root);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    pub fn node(&self, region: &str) -> Option<&NodeEntry> {
        self.nodes
            .iter()
            .find(|n| n.region == region || n.name == region)
    }
}

impl Manifest {
    /// The node of `region`, or an error that lists the regions the stack runs.
    pub fn require_node(&self, region: &str) -> Result<&NodeEntry> {
        self.node(region).with_context(|| {
            let known: Vec<&str> = self.nodes.iter().map(|n| n.region.as_str()).collect();
            format!(
                "unknown region {region:?}; the stack runs: {}",
                known.join(", ")
            )
        })
    }
}

/// What the Functions host stand-in's control endpoint can do to an app, as Azure stops and
/// starts a Function App.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAction {
    Stop,
    Start,
}

impl NodeEntry {
    /// Stops or starts this region's app (`POST /admin/host/stop|start` with the master key).
    /// Starting waits until the handler is ready again.
    pub async fn control(&self, action: HostAction) -> Result<()> {
        let verb = match action {
            HostAction::Stop => "stop",
            HostAction::Start => "start",
        };
        let resp = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()?
            .post(format!("{}/admin/host/{verb}", self.url))
            .header("x-functions-key", &self.master_key)
            .send()
            .await
            .with_context(|| format!("reaching the {} host", self.region))?;
        if !resp.status().is_success() {
            let status = resp.status();
            anyhow::bail!(
                "{verb} {} failed ({status}): {}",
                self.region,
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }
}
