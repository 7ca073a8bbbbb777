//! A node's fixed configuration and the bounds on what one invocation does.

use chrono::Duration;

/// Event Grid's limit on events per delivery (and per publish request).
pub const MAX_EVENTS_PER_DELIVERY: usize = 5_000;
/// Pending entries a sweep looks at, and executions it performs, at most.
pub const SWEEP_SCAN: usize = 200;
pub const SWEEP_EXECUTIONS: usize = 50;
/// Executions done inline by one delivery at most: Event Grid gives a delivery 30 s, and the
/// rest are due at once for the next sweep anyway (rank 0 has no deadline to wait for).
pub const MAX_INLINE_EXECUTIONS: usize = 20;
/// Unpublished completions a sweep re-publishes at most.
pub const OUTBOX_BATCH: usize = 200;
/// Catch-up: entries per page, pages per peer per round, peers per round.
pub const CATCH_UP_PAGE: usize = 200;
pub const CATCH_UP_PAGES: usize = 50;
pub const MAX_PEERS: usize = 32;
/// Bound on the questions one sweep asks first-in-lines about single transactions (`probe`):
/// asked at once, each bounded by a tenth of the takeover deadline.
pub const MAX_LACK_PROBES: usize = 16;

/// A node's fixed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub region: String,
    /// Base URL at which peers reach this node.
    pub public_url: String,
    /// Bootstrap peer base URLs (`SALDO_PEERS`); peers heard by heartbeat are added at run time.
    pub peers: Vec<String>,
    /// How long each rank waits after the one before it (`SALDO_TAKEOVER_MS`).
    pub takeover: Duration,
    /// A peer is live if its stored heartbeat changed within this (`SALDO_LIVENESS_MS`).
    pub liveness: Duration,
    /// How stale this instance's copy of the region's peer records may be before ranking reads
    /// them again (`SALDO_PEERS_CACHE_MS`).
    pub peers_cache: Duration,
    /// Catch up with peers every this many sweeps (and at start).
    pub catch_up_every: u64,
}
