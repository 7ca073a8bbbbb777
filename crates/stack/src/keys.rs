//! Local-only keys. They are generated on first start, kept under `<root>/data/keys.json` (never in
//! the repository), and reused on restart so that subscriptions and bookmarks stay valid.

use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Keys {
    pub note: String,
    /// Event Grid topic key: base64 of 32 random bytes, as Azure's keys are (SAS signing
    /// base64-decodes it).
    pub topic_key: String,
    /// Function key shared by the worker apps (peers call each other's `ledger` with it).
    pub fleet_function_key: String,
    /// Master (admin) key of every local Functions host.
    pub master_key: String,
}

fn token(n: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

impl Keys {
    pub fn generate() -> Self {
        let mut raw = [0u8; 32];
        rand::rng().fill(&mut raw);
        Keys {
            note:
                "LOCAL-ONLY keys for the local stack, generated at first start. Never use in Azure."
                    .into(),
            topic_key: base64::engine::general_purpose::STANDARD.encode(raw),
            fleet_function_key: token(40),
            master_key: token(40),
        }
    }

    /// Loads the keys at `path`, or generates and saves them.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).with_context(|| {
                format!("{} is damaged; delete it to get new keys", path.display())
            });
        }
        let keys = Self::generate();
        std::fs::write(path, serde_json::to_vec_pretty(&keys)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(keys)
    }
}
