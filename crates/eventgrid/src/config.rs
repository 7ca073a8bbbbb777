//! The topic's configuration and local resource ids.

use std::path::PathBuf;
use std::time::Duration;

use crate::schema::InputSchema;

/// The Azure subscription id used in local resource ids.
pub const LOCAL_SUBSCRIPTION_ID: &str = "00000000-0000-0000-0000-000000000000";

/// The resource id of a local topic called `name`.
pub fn topic_resource_id(name: &str) -> String {
    format!(
        "/subscriptions/{LOCAL_SUBSCRIPTION_ID}/resourceGroups/saldo-local/providers/Microsoft.EventGrid/topics/{name}"
    )
}

/// A scaled timeout never drops below this: at `--time-scale 1000` the 30 s delivery timeout
/// would be 30 ms, and a loaded machine would turn healthy deliveries into timeouts.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Config {
    /// The topic key (base64, like Azure's; SAS tokens are signed with its decoded bytes).
    pub key: String,
    pub data_dir: PathBuf,
    pub deadletter_dir: PathBuf,
    pub topic_name: String,
    pub input_schema: InputSchema,
    /// Every duration (retry delays, probation, TTL, timeouts, handshake window) is divided by this.
    pub time_scale: f64,
    /// Subscriptions to create at start (no handshake: they describe subscriptions that exist).
    pub subscriptions_file: Option<PathBuf>,
    /// Events one subscription keeps in memory; the rest of its backlog waits in its spill file
    /// (see `spill.rs`). Never a reason to refuse publishing.
    pub max_in_memory: usize,
    /// The topic's publish rate limits (0: unlimited); beyond them publishing answers 429.
    pub max_events_per_second: u64,
    pub max_bytes_per_second: u64,
    /// The identity stand-in's public key (base64 Ed25519): Bearer tokens it signed are accepted.
    pub entra_public_key: Option<String>,
    /// Azure's `disableLocalAuth`: publishing with keys or SAS tokens is refused.
    pub disable_local_auth: bool,
    /// Concurrent in-flight deliveries per subscription.
    pub max_in_flight: usize,
    /// The event log is compacted when it is larger than this (and has doubled since the last time).
    pub compact_bytes: u64,
}

impl Config {
    pub fn new(
        key: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        deadletter_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            key: key.into(),
            data_dir: data_dir.into(),
            deadletter_dir: deadletter_dir.into(),
            topic_name: "saldo-local".into(),
            input_schema: InputSchema::EventGrid,
            time_scale: 1.0,
            subscriptions_file: None,
            max_in_memory: 10_000,
            max_events_per_second: crate::rate::AZURE_EVENTS_PER_SECOND,
            max_bytes_per_second: crate::rate::AZURE_BYTES_PER_SECOND,
            entra_public_key: None,
            disable_local_auth: false,
            max_in_flight: 8,
            compact_bytes: 64 * 1024 * 1024,
        }
    }
}
