//! `saldo verify`: audits a running stack's database and says whether it is consistent.
//!
//! It only reads. What it reads, in this order (so that a fleet working while it reads cannot
//! make a consistent database look broken):
//! 1. the API's `idempotency` collection (every command the API accepted),
//! 2. every `ledger_<node>` collection (each node's view of every transaction),
//! 3. the `warehouse` (products and `tx:<id>` markers) in one snapshot transaction, so products
//!    and markers are seen at one instant. A ledger outcome read in step 2 was recorded after its
//!    marker committed, so the marker is in step 3's snapshot.
//!
//! The checks ([`check`], in `checks`) are pure functions of that [`Snapshot`], so they are unit-tested
//! without a database, and chaos and demo reuse them:
//! - **markers**: every ledger outcome agrees with the warehouse marker (status, executor,
//!   resulting quantities); a ledger outcome without a marker is a lost commit.
//! - **stock**: every product's quantity is where its history of applied transactions leads.
//!   No clocks are compared: each applied line is a step `before -> after` (the marker records
//!   `after`; the command's change gives `before`; an absolute `saldo` starts a new segment),
//!   and the steps must chain from the segment starts to the current quantity (a degree count:
//!   every quantity a step starts from was produced by another step, and the current quantity is
//!   where a chain ends).
//! - **once**: no transaction applied twice: no two records name different executors, and no
//!   product is off by exactly one more application of one of its transactions.
//! - **coverage**: every ledger of a running node holds every transaction older than the
//!   catch-up horizon, with its outcome.
//! - **negative**: no product and no recorded quantity below zero.
//! - **pending**: what no node has decided yet, and for how long; anything older than
//!   `stuck_after` is an inconsistency (the fleet promises progress).

//!
//! Modules: `checks` (the checks), `read` (reading a live database into a [`Snapshot`]) and
//! `command` (`saldo verify` itself).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use saldo_core::events::ProductLine;
use saldo_store::OutcomeRecord;
use serde::Serialize;

mod checks;
mod command;
mod read;

pub use checks::check;
pub use command::{DatabaseArgs, VerifyArgs, verify};
pub use read::{Source, read};

/// Upper bound on the documents read from one collection: beyond it the audit refuses rather
/// than running out of memory (a bigger audit needs paging by time, not built yet).
pub const MAX_DOCS: usize = 2_000_000;
/// Problems listed per check in the table (all of them are in `--json`).
const SHOWN: usize = 12;

/// How a node's app answered (its ledger is read from the database either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NodeState {
    Running,
    /// Stopped on purpose (403 "This web app is stopped"): its ledger may lag.
    Stopped,
    Unreachable,
    /// No URL given for it: assumed running.
    Unknown,
}

/// One node's ledger entry of one transaction, as far as the audit needs it.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub outcome: Option<OutcomeRecord>,
    /// When the node recorded the command (epoch ms on that node's clock), if it received it.
    pub received_at: Option<DateTime<Utc>>,
    pub recorded_at: Option<DateTime<Utc>>,
}

/// Everything the checks look at.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub now: DateTime<Utc>,
    /// Commands the API accepted: transaction id -> when.
    pub accepted: BTreeMap<String, Option<DateTime<Utc>>>,
    /// node -> transaction -> entry.
    pub ledgers: BTreeMap<String, BTreeMap<String, Entry>>,
    /// transaction -> its command's lines, from any ledger that has them.
    pub commands: BTreeMap<String, Vec<ProductLine>>,
    /// transaction -> the warehouse marker's outcome.
    pub markers: BTreeMap<String, OutcomeRecord>,
    /// product id -> quantity.
    pub products: BTreeMap<u64, i64>,
    /// node -> how its app answered.
    pub nodes: BTreeMap<String, NodeState>,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// A transaction decided longer ago than this must be in every running node's ledger.
    pub horizon: Duration,
    /// A transaction undecided for longer than this is stuck.
    pub stuck_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            horizon: Duration::from_secs(60),
            stuck_after: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub name: &'static str,
    pub ok: bool,
    /// What was checked, with figures.
    pub summary: String,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingTx {
    pub transaction: String,
    pub age_ms: i64,
    /// Where it is known: the ledgers holding it pending, or `accepted only`.
    pub known_by: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub checks: Vec<Check>,
    pub pending: Vec<PendingTx>,
    pub nodes: BTreeMap<String, NodeState>,
    pub markers: usize,
    pub completed: usize,
    pub rejected: usize,
    pub accepted: usize,
    pub products: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }
    /// The failed checks' ids, for one-line summaries.
    pub fn failed(&self) -> Vec<&'static str> {
        self.checks.iter().filter(|c| !c.ok).map(|c| c.id).collect()
    }

    pub fn print(&self) {
        println!("{:<30} {:<6} detail", "check", "result");
        for c in &self.checks {
            println!(
                "{:<30} {:<6} {}",
                c.name,
                if c.ok { "ok" } else { "FAIL" },
                c.summary
            );
            for p in c.problems.iter().take(SHOWN) {
                println!("{:<30} {:<6}   - {p}", "", "");
            }
            if c.problems.len() > SHOWN {
                println!(
                    "{:<30} {:<6}   ... and {} more (see --json)",
                    "",
                    "",
                    c.problems.len() - SHOWN
                );
            }
        }
        if !self.pending.is_empty() {
            println!();
            println!("{:<40} {:>10}  known by", "still pending", "age");
            for p in self.pending.iter().take(SHOWN) {
                println!(
                    "{:<40} {:>8.1} s  {}",
                    p.transaction,
                    p.age_ms as f64 / 1000.0,
                    p.known_by.join(", ")
                );
            }
            if self.pending.len() > SHOWN {
                println!("... and {} more", self.pending.len() - SHOWN);
            }
        }
    }
}
