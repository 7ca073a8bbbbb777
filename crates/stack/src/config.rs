//! What a stack is made of and where it lives. Everything has a default that `saldo up` uses;
//! tests override the root (a temporary folder), the ports (free ones) and the durations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The regions `saldo up` runs a worker in, unless told otherwise (the same defaults as `infra/`).
pub const DEFAULT_REGIONS: [&str; 3] = ["westeurope", "northeurope", "swedencentral"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Mongodb,
    Topic,
    Workers,
    Api,
    Spa,
}

impl Component {
    pub const ALL: [Component; 5] = [
        Component::Mongodb,
        Component::Topic,
        Component::Workers,
        Component::Api,
        Component::Spa,
    ];
}

/// Fixed ports; `None` means "a free one, chosen at start" (and kept for the next start when it is
/// still free, so that bookmarks and persisted subscriptions stay valid).
#[derive(Debug, Clone, Default)]
pub struct Ports {
    pub mongodb: Option<u16>,
    pub topic: Option<u16>,
    pub api: Option<u16>,
    pub spa: Option<u16>,
    /// Port of the first worker; the others follow (first + 1, first + 2, ...).
    pub first_node: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The repository: `functions-host/`, `frontend/`, `tools/` and the Python venv live here.
    pub repo: PathBuf,
    /// The stack's state folder: `stack.json`, `logs/`, `data/`, `deadletter/`.
    pub root: PathBuf,
    /// Where the `saldo-*` binaries are (normally beside the `saldo` binary).
    pub bin_dir: PathBuf,
    /// Interface everything binds to. Loopback only: this is a developer's stack.
    pub host: String,
    pub regions: Vec<String>,
    pub ports: Ports,
    /// Which components to run (in this order, each only if it exists).
    pub components: Vec<Component>,
    /// Fail instead of skipping a component whose program is missing (tests want this).
    pub require_all: bool,
    /// Event Grid emulator time scale: every retry delay and TTL is divided by it.
    pub time_scale: f64,
    /// App settings for every worker, on top of the defaults (e.g. `SALDO_TAKEOVER_MS`).
    pub worker_settings: BTreeMap<String, String>,
    /// App settings for the API, on top of the defaults.
    pub api_settings: BTreeMap<String, String>,
    /// Seed the warehouse with the demo catalogue on start (idempotent).
    pub seed: bool,
    /// Extra environment for every process (e.g. `APPLICATIONINSIGHTS_CONNECTION_STRING`).
    pub env: BTreeMap<String, String>,
    /// How the supervisor of `saldo up` restarts a component that died.
    pub restart: crate::supervisor::Policy,
    /// Start SecantusDB with `--sync-on-commit`, so that an acknowledged transaction commit is on
    /// disk (without it a SIGKILL of the database loses acknowledged commits). Only a
    /// measurement turns it off.
    pub mongodb_sync_on_commit: bool,
}

impl StackConfig {
    /// The defaults `saldo up` uses for a repository checked out at `repo`.
    pub fn new(repo: &Path, bin_dir: &Path) -> Self {
        StackConfig {
            repo: repo.to_path_buf(),
            root: repo.join(".saldo"),
            bin_dir: bin_dir.to_path_buf(),
            host: "127.0.0.1".into(),
            regions: DEFAULT_REGIONS.iter().map(|s| s.to_string()).collect(),
            ports: Ports::default(),
            components: Component::ALL.to_vec(),
            require_all: false,
            time_scale: 1.0,
            worker_settings: BTreeMap::new(),
            api_settings: BTreeMap::new(),
            seed: true,
            env: BTreeMap::new(),
            restart: crate::supervisor::Policy::default(),
            mongodb_sync_on_commit: true,
        }
    }

    pub fn wants(&self, c: Component) -> bool {
        self.components.contains(&c)
    }

    pub fn venv(&self) -> PathBuf {
        self.repo.join(".saldo").join("venv")
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn validate(&self) -> Result<()> {
        if self.regions.is_empty() {
            bail!("at least one region is needed");
        }
        for r in &self.regions {
            if r.is_empty()
                || !r
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                bail!(
                    "region {r:?} is not a valid Azure region name (lower-case letters and digits)"
                );
            }
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            bail!(
                "time scale must be a positive number, not {}",
                self.time_scale
            );
        }
        if !self.repo.join("functions-host").is_dir() {
            bail!(
                "{} does not look like the Saldo repository (no functions-host/); run from the \
                 repository or pass --repo",
                self.repo.display()
            );
        }
        Ok(())
    }
}

/// Finds the repository: the first folder, from `start` upwards, that holds `functions-host/` and
/// `Cargo.toml`.
pub fn find_repo(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| d.join("functions-host").is_dir() && d.join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
}
