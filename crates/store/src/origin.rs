//! Where each database round trip comes from, so that the cost of a purchase can be broken down
//! (`saldo bench`) from counters the workers themselves keep.
//!
//! The worker runs every store call inside [`scope`] with the [`Origin`] of the work (a command's
//! insert, an execution, a peer's outcome, a heartbeat, ...). The store reads it back with
//! [`current`] when it counts a round trip, together with the round trip's [`Kind`]. A task-local
//! is used rather than a parameter so that the `Store` trait stays what it is: the origin is
//! bookkeeping, never part of what the store does.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a database round trip was done for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// Recording the commands of a delivery (or a catch-up page's commands: see `CatchUp`).
    Command,
    /// The warehouse transaction that applies (or adopts) a transaction.
    Execution,
    /// Recording this node's own outcome in its ledger, and the outbox flag.
    OwnOutcome,
    /// Recording the outcomes peers published.
    PeerOutcome,
    /// Storing heartbeats heard, this node's own record, and reading the region's records.
    Heartbeat,
    /// The sweep's scans (pending work, the outbox).
    Sweep,
    /// Catching up from peers, and serving peers' catch-up pages.
    CatchUp,
    /// Reads served to the API and to people (ledger entries, products, status).
    Read,
    /// Start-up, quarantine, anything not named above.
    Other,
}

impl Origin {
    pub const ALL: [Origin; 9] = [
        Origin::Command,
        Origin::Execution,
        Origin::OwnOutcome,
        Origin::PeerOutcome,
        Origin::Heartbeat,
        Origin::Sweep,
        Origin::CatchUp,
        Origin::Read,
        Origin::Other,
    ];

    /// The name used in counters (`dbOps.<origin>.<kind>`).
    pub fn name(self) -> &'static str {
        match self {
            Origin::Command => "command",
            Origin::Execution => "execution",
            Origin::OwnOutcome => "ownOutcome",
            Origin::PeerOutcome => "peerOutcome",
            Origin::Heartbeat => "heartbeat",
            Origin::Sweep => "sweep",
            Origin::CatchUp => "catchUp",
            Origin::Read => "read",
            Origin::Other => "other",
        }
    }
}

/// What kind of round trip it was (what Cosmos DB bills differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A read of one document by `_id`.
    PointRead,
    /// A query (a filter, a range, several ids).
    Query,
    /// A write command (insert, update, upsert, find-and-modify), whatever the number of
    /// documents it writes ([`OpCounters::docs`] counts those).
    Write,
    /// Committing or aborting a transaction.
    TxnEnd,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::PointRead, Kind::Query, Kind::Write, Kind::TxnEnd];

    pub fn name(self) -> &'static str {
        match self {
            Kind::PointRead => "pointRead",
            Kind::Query => "query",
            Kind::Write => "write",
            Kind::TxnEnd => "txnEnd",
        }
    }
}

tokio::task_local! {
    static ORIGIN: Origin;
}

/// Runs `f` with `origin` as the origin of every round trip it makes (the innermost scope wins).
pub async fn scope<F: Future>(origin: Origin, f: F) -> F::Output {
    ORIGIN.scope(origin, f).await
}

/// The origin of the work running now ([`Origin::Other`] outside any scope).
pub fn current() -> Origin {
    ORIGIN.try_with(|o| *o).unwrap_or(Origin::Other)
}

const ORIGINS: usize = Origin::ALL.len();
const KINDS: usize = Kind::ALL.len();

/// Round trips per origin and kind, and documents written per origin. Monotonic.
#[derive(Default)]
pub struct OpCounters {
    ops: [[AtomicU64; KINDS]; ORIGINS],
    docs: [AtomicU64; ORIGINS],
}

impl OpCounters {
    /// Counts one round trip of `kind` for the current origin.
    pub fn count(&self, kind: Kind) {
        self.ops[current() as usize][kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` documents written (a write round trip may write many).
    pub fn docs(&self, n: usize) {
        self.docs[current() as usize].fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.ops
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// `dbOps.<origin>.<kind>` and `dbDocs.<origin>` for every counter that is not zero.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for o in Origin::ALL {
            for k in Kind::ALL {
                let v = self.ops[o as usize][k as usize].load(Ordering::Relaxed);
                if v > 0 {
                    m.insert(format!("dbOps.{}.{}", o.name(), k.name()), v);
                }
            }
            let d = self.docs[o as usize].load(Ordering::Relaxed);
            if d > 0 {
                m.insert(format!("dbDocs.{}", o.name()), d);
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_are_counted_under_the_innermost_origin() {
        let c = OpCounters::default();
        c.count(Kind::Query);
        scope(Origin::Sweep, async {
            c.count(Kind::Query);
            scope(Origin::Execution, async {
                c.count(Kind::Write);
                c.docs(3);
            })
            .await;
            c.count(Kind::TxnEnd);
        })
        .await;
        let s = c.snapshot();
        assert_eq!(s["dbOps.other.query"], 1);
        assert_eq!(s["dbOps.sweep.query"], 1);
        assert_eq!(s["dbOps.sweep.txnEnd"], 1);
        assert_eq!(s["dbOps.execution.write"], 1);
        assert_eq!(s["dbDocs.execution"], 3);
        assert_eq!(c.total(), 4);
        assert_eq!(s.len(), 5, "zero counters are left out: {s:?}");
    }
}
