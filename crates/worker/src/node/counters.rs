//! The node's monotonic counters (`/api/status`, heartbeats).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use saldo_store::Store;

use super::{Bus, Clock, Node, PeerClient};

macro_rules! counters {
    ($($field:ident => $name:literal),* $(,)?) => {
        /// Monotonic counters, reported by `/api/status` and in heartbeats.
        #[derive(Default)]
        pub struct Counters { $(pub $field: AtomicU64,)* }
        impl Counters {
            pub fn snapshot(&self) -> BTreeMap<String, u64> {
                let mut m = BTreeMap::new();
                $(m.insert($name.to_string(), self.$field.load(Ordering::Relaxed));)*
                m
            }
        }
    };
}
counters! {
    received => "received",
    duplicates => "duplicates",
    executed => "executed",
    taken_over => "takenOver",
    rejected => "rejected",
    adopted => "adopted",
    peers_recorded => "peersRecorded",
    catch_up_repairs => "catchUpRepairs",
    publish_retries => "publishRetries",
    conflicts => "conflicts",
    invalid => "invalid",
    contended => "contended",
    inline_failed => "inlineFailed",
    published_unrecorded => "publishedUnrecorded",
    // Sweeps that got past their takeover step (so had read the region's peer records): what
    // tests wait on instead of sleeping "a few sweeps".
    sweeps => "sweeps",
}

pub(super) fn inc(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

impl<S: Store, C: Clock, B: Bus, P: PeerClient> Node<S, C, B, P> {
    /// The counters, with the store's count of database operations.
    pub fn counters_snapshot(&self) -> BTreeMap<String, u64> {
        let mut m = self.counters.snapshot();
        m.insert("dbOps".into(), self.store.db_ops());
        m
    }
}
