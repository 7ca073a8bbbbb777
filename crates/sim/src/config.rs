//! The knobs of one run, and what a run did.

use saldo_store::Mutation;

/// Knobs of one run. [`SimConfig::default`] is what the tests use.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub commands: usize,
    pub products: u64,
    /// Sim time during which commands flow and chaos happens, then heal time.
    pub active_ms: i64,
    pub heal_ms: i64,
    /// The last part of the heal time, in which no command is delivered any more: convergence
    /// needs (nodes - 1) takeover deadlines plus a couple of catch-up rounds after the last
    /// command any node accepted.
    pub quiet_ms: i64,
    pub takeover_ms: i64,
    pub liveness_ms: i64,
    pub peers_cache_ms: i64,
    pub sweep_ms: i64,
    pub heartbeat_ms: i64,
    pub catch_up_every: u64,
    pub drop_p: f64,
    pub dup_p: f64,
    pub max_delay_ms: i64,
    pub db_fault_p: f64,
    pub publish_fail_p: f64,
    pub peer_fail_p: f64,
    /// Chaos events (instance crash, region crash, stop, database down) during the active phase.
    pub chaos_events: usize,
    /// HTTP instances per region over its one ledger (deliveries and peer calls go to any of
    /// them); with 2 or more, heartbeat and sweep run on one more instance of their own, as on
    /// Flex Consumption. With 1, one process does everything.
    pub instances: usize,
    /// Each instance's clock is off by up to this much, either way (drawn again on restart).
    pub clock_skew_ms: i64,
    /// A database call takes up to this long (simulated); every call is a step of its own, so
    /// other handlers run meanwhile. 0: calls take no time (still one step each).
    pub db_latency_ms: i64,
    /// Probability that a delivery carries a bad event too (malformed, unknown type, another
    /// data version), and that a delivery is nothing but a bad event.
    pub bad_event_p: f64,
    /// Probability that a peer's feed page is cut short (page boundaries fall anywhere).
    pub feed_cut_p: f64,
    /// A deliberate store bug (the mutation tests); [`Mutation::None`] otherwise.
    pub mutation: Mutation,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            commands: 40,
            products: 4,
            active_ms: 40_000,
            heal_ms: 40_000,
            quiet_ms: 25_000,
            takeover_ms: 3_000,
            liveness_ms: 6_000,
            peers_cache_ms: 500,
            sweep_ms: 1_000,
            heartbeat_ms: 2_500,
            catch_up_every: 5,
            drop_p: 0.1,
            dup_p: 0.1,
            max_delay_ms: 2_000,
            db_fault_p: 0.02,
            publish_fail_p: 0.1,
            peer_fail_p: 0.1,
            chaos_events: 6,
            instances: 2,
            clock_skew_ms: 3_000,
            db_latency_ms: 20,
            bad_event_p: 0.05,
            feed_cut_p: 0.25,
            mutation: Mutation::None,
        }
    }
}

impl SimConfig {
    /// `k` HTTP instances per region (plus a timer instance when `k` ≥ 2).
    pub fn with_instances(k: usize) -> Self {
        SimConfig {
            instances: k.clamp(1, 8),
            ..SimConfig::default()
        }
    }
}

/// What a run did (printed by the binary; the tests assert on the checks).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub seed: u64,
    pub transactions: usize,
    pub applied: usize,
    pub rejected: usize,
    pub deliveries: usize,
    pub dead_lettered: usize,
    /// Instance crashes, region crashes and stops.
    pub crashes: usize,
    pub taken_over: u64,
    pub adopted: u64,
    pub repairs: u64,
    /// Database calls that were a step of their own, interleaved with other handlers.
    pub steps: u64,
    /// Deliveries answered 2xx whose commands and bad events were checked on the spot.
    pub acknowledged: usize,
    /// Bad events quarantined over all regions.
    pub quarantined: usize,
    /// Feed pages served to peers (their no-skip property is checked at the end).
    pub feed_pages: usize,
    /// Restarted instances whose clock went back behind their previous process's.
    pub clock_jumps_back: usize,
    /// Commands the API published that every region dead-lettered, by name: never executed.
    pub undeliverable: Vec<String>,
}
