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
//! The checks ([`check`]) are pure functions of that [`Snapshot`], so they are unit-tested
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

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, TimeZone, Utc};
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use saldo_core::events::{Operation, Outcome, ProductLine};
use saldo_store::OutcomeRecord;
use serde::Serialize;

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

fn quantities_agree(a: &OutcomeRecord, b: &OutcomeRecord) -> bool {
    let key = |o: &OutcomeRecord| {
        let mut q: Vec<(u64, i64)> = o.quantities.iter().map(|q| (q.id, q.saldo)).collect();
        q.sort();
        q
    };
    key(a) == key(b)
}

fn status_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Completed => "completed",
        Outcome::Rejected => "rejected",
    }
}

fn describe(o: &OutcomeRecord) -> String {
    format!("{} by {}", status_name(o.status), o.node)
}

/// Runs every check on `s`.
pub fn check(s: &Snapshot, opts: &Options) -> Report {
    let entries: usize = s.ledgers.values().map(|l| l.len()).sum();
    let checks = vec![
        check_markers(s, entries),
        check_stock(s),
        check_once(s),
        check_coverage(s, opts),
        check_negative(s),
    ];
    let (pending, stuck) = pending(s, opts);
    let mut checks = checks;
    checks.push(stuck);
    Report {
        checks,
        pending,
        nodes: s.nodes.clone(),
        markers: s.markers.len(),
        completed: s
            .markers
            .values()
            .filter(|m| m.status == Outcome::Completed)
            .count(),
        rejected: s
            .markers
            .values()
            .filter(|m| m.status == Outcome::Rejected)
            .count(),
        accepted: s.accepted.len(),
        products: s.products.len(),
    }
}

fn check_markers(s: &Snapshot, entries: usize) -> Check {
    let mut problems = Vec::new();
    for (node, ledger) in &s.ledgers {
        for (tx, e) in ledger {
            let Some(o) = &e.outcome else { continue };
            match s.markers.get(tx) {
                None => problems.push(format!(
                    "{tx}: ledger_{node} says {} but the warehouse has no marker (a lost commit)",
                    describe(o)
                )),
                Some(m) if m.status != o.status || m.node != o.node => problems.push(format!(
                    "{tx}: ledger_{node} says {}, the marker says {}",
                    describe(o),
                    describe(m)
                )),
                Some(m) if !quantities_agree(m, o) => problems.push(format!(
                    "{tx}: ledger_{node} records quantities {:?}, the marker {:?}",
                    o.quantities, m.quantities
                )),
                Some(_) => {}
            }
        }
    }
    Check {
        id: "markers",
        name: "markers agree with ledgers",
        ok: problems.is_empty(),
        summary: format!(
            "{} markers against {entries} entries in {} ledgers",
            s.markers.len(),
            s.ledgers.len()
        ),
        problems,
    }
}

/// Per product: the steps (`before -> after`) its completed transactions took, and the values
/// segments started at (absolute quantities).
#[derive(Default)]
struct History {
    /// value -> starts + arrivals - departures.
    balance: BTreeMap<i64, i64>,
    /// (transaction, change) of every relative step.
    changes: Vec<(String, i64)>,
    steps: usize,
}

impl History {
    /// Where chains end (a quantity may end several segments: each counts).
    fn ends(&self) -> Vec<i64> {
        self.balance
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(v, _)| *v)
            .collect()
    }
}

fn histories(s: &Snapshot, problems: &mut Vec<String>) -> BTreeMap<u64, History> {
    let mut h: BTreeMap<u64, History> = BTreeMap::new();
    for (tx, m) in &s.markers {
        if m.status != Outcome::Completed {
            continue;
        }
        let lines = s.commands.get(tx);
        for q in &m.quantities {
            let p = h.entry(q.id).or_default();
            p.steps += 1;
            let Some(line) = lines.and_then(|l| l.iter().find(|l| l.id == q.id)) else {
                problems.push(format!(
                    "product {}: {tx} changed it (marker) but no ledger holds its command, so its \
                     step cannot be placed",
                    q.id
                ));
                continue;
            };
            match line.operation() {
                Operation::Set(v) => {
                    if v != q.saldo {
                        problems.push(format!(
                            "product {}: {tx} set it to {v} but its marker records {}",
                            q.id, q.saldo
                        ));
                    }
                    *p.balance.entry(q.saldo).or_default() += 1;
                }
                Operation::Change(d) => {
                    *p.balance.entry(q.saldo - d).or_default() -= 1;
                    *p.balance.entry(q.saldo).or_default() += 1;
                    p.changes.push((tx.clone(), d));
                }
            }
        }
    }
    h
}

fn check_stock(s: &Snapshot) -> Check {
    let mut problems = Vec::new();
    let h = histories(s, &mut problems);
    let ids: BTreeSet<u64> = s.products.keys().chain(h.keys()).copied().collect();
    let steps: usize = h.values().map(|p| p.steps).sum();
    for id in &ids {
        let empty = History::default();
        let p = h.get(id).unwrap_or(&empty);
        let Some(&saldo) = s.products.get(id) else {
            problems.push(format!(
                "product {id}: {} transactions changed it, but it is not in the warehouse",
                p.steps
            ));
            continue;
        };
        for (v, n) in &p.balance {
            if *n < 0 {
                problems.push(format!(
                    "product {id}: {} transaction(s) started from quantity {v}, which no \
                     transaction left it at (a step is missing or altered)",
                    -n
                ));
            }
        }
        let ends = p.ends();
        if !ends.contains(&saldo) {
            let expected = match ends.as_slice() {
                [] => "no transaction ever set it".to_string(),
                [one] => format!("its history leads to {one}"),
                many => format!("its history ends at one of {many:?}"),
            };
            problems.push(format!("product {id}: quantity {saldo}, but {expected}"));
        }
    }
    Check {
        id: "stock",
        name: "stock follows its history",
        ok: problems.is_empty(),
        summary: format!(
            "{} products, {steps} applied lines from {} markers",
            ids.len(),
            s.markers.len()
        ),
        problems,
    }
}

fn check_once(s: &Snapshot) -> Check {
    let mut problems = Vec::new();
    // Two records naming different executors: two nodes each believed they executed it.
    let mut executors: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (tx, m) in &s.markers {
        executors.entry(tx).or_default().insert(&m.node);
    }
    for ledger in s.ledgers.values() {
        for (tx, e) in ledger {
            if let Some(o) = &e.outcome
                && o.status == Outcome::Completed
            {
                executors.entry(tx).or_default().insert(&o.node);
            }
        }
    }
    for (tx, who) in &executors {
        if who.len() > 1 {
            let who: Vec<&str> = who.iter().copied().collect();
            problems.push(format!("{tx}: executed by {}", who.join(" and ")));
        }
    }
    // A product off by exactly one more application of one of its changes.
    let mut ignored = Vec::new();
    for (id, p) in histories(s, &mut ignored) {
        let Some(&saldo) = s.products.get(&id) else {
            continue;
        };
        let ends = p.ends();
        if ends.contains(&saldo) {
            continue;
        }
        let twice: Vec<&(String, i64)> = p
            .changes
            .iter()
            .filter(|(_, d)| ends.contains(&(saldo - d)))
            .collect();
        if let Some((tx, d)) = twice.first() {
            let others = if twice.len() > 1 {
                format!(" (or another of the {} with the same change)", twice.len())
            } else {
                String::new()
            };
            problems.push(format!(
                "product {id}: quantity {saldo} is one more application of {tx}'s change {d:+} \
                 past its history{others}: applied twice"
            ));
        }
    }
    Check {
        id: "once",
        name: "nothing applied twice",
        ok: problems.is_empty(),
        summary: format!("{} transactions with an executor", executors.len()),
        problems,
    }
}

fn check_coverage(s: &Snapshot, opts: &Options) -> Check {
    let horizon = s.now - chrono::Duration::from_std(opts.horizon).unwrap_or_default();
    let mut problems = Vec::new();
    let mut lagging_stopped: BTreeMap<&str, usize> = BTreeMap::new();
    let old: Vec<(&String, &OutcomeRecord)> =
        s.markers.iter().filter(|(_, m)| m.at < horizon).collect();
    for (node, ledger) in &s.ledgers {
        let state = s.nodes.get(node).copied().unwrap_or(NodeState::Unknown);
        for (tx, m) in &old {
            let gap = match ledger.get(*tx) {
                None => "lacks",
                Some(e) if e.outcome.is_none() => "still has pending",
                // A different outcome is the markers check's to report.
                Some(_) => continue,
            };
            if matches!(state, NodeState::Stopped | NodeState::Unreachable) {
                *lagging_stopped.entry(node).or_default() += 1;
                continue;
            }
            problems.push(format!(
                "ledger_{node} {gap} {tx} ({} {:.0} s ago)",
                describe(m),
                (s.now - m.at).num_milliseconds() as f64 / 1000.0
            ));
        }
    }
    let mut summary = format!(
        "{} transactions older than {} s in {} ledgers",
        old.len(),
        opts.horizon.as_secs(),
        s.ledgers.len()
    );
    for (node, n) in lagging_stopped {
        summary.push_str(&format!(
            "; {node} is {:?} and {n} behind (not counted)",
            s.nodes[node]
        ));
    }
    Check {
        id: "coverage",
        name: "every ledger holds every tx",
        ok: problems.is_empty(),
        summary,
        problems,
    }
}

fn check_negative(s: &Snapshot) -> Check {
    let mut problems = Vec::new();
    for (id, saldo) in &s.products {
        if *saldo < 0 {
            problems.push(format!("product {id} has {saldo}"));
        }
    }
    for (tx, m) in &s.markers {
        for q in &m.quantities {
            if q.saldo < 0 {
                problems.push(format!("{tx} left product {} at {}", q.id, q.saldo));
            }
        }
    }
    Check {
        id: "negative",
        name: "nothing negative",
        ok: problems.is_empty(),
        summary: format!(
            "{} products, lowest {}",
            s.products.len(),
            s.products
                .values()
                .min()
                .map_or("-".to_string(), |v| v.to_string())
        ),
        problems,
    }
}

fn pending(s: &Snapshot, opts: &Options) -> (Vec<PendingTx>, Check) {
    let mut known: BTreeMap<&str, (Option<DateTime<Utc>>, Vec<String>)> = BTreeMap::new();
    let mut decided: BTreeSet<&str> = s.markers.keys().map(String::as_str).collect();
    for ledger in s.ledgers.values() {
        for (tx, e) in ledger {
            if e.outcome.is_some() {
                decided.insert(tx);
            }
        }
    }
    for (node, ledger) in &s.ledgers {
        for (tx, e) in ledger {
            if decided.contains(tx.as_str()) {
                continue;
            }
            let k = known.entry(tx).or_default();
            let t = e.received_at.or(e.recorded_at);
            k.0 = match (k.0, t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            k.1.push(node.clone());
        }
    }
    for (tx, at) in &s.accepted {
        if decided.contains(tx.as_str()) {
            continue;
        }
        let k = known.entry(tx).or_default();
        if k.1.is_empty() {
            k.1.push("accepted only (no ledger)".into());
        }
        k.0 = match (k.0, *at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let mut list: Vec<PendingTx> = known
        .into_iter()
        .map(|(tx, (at, by))| PendingTx {
            transaction: tx.to_string(),
            age_ms: at.map_or(0, |t| (s.now - t).num_milliseconds().max(0)),
            known_by: by,
        })
        .collect();
    list.sort_by_key(|p| std::cmp::Reverse(p.age_ms));
    let limit = opts.stuck_after.as_millis() as i64;
    let problems: Vec<String> = list
        .iter()
        .filter(|p| p.age_ms > limit)
        .map(|p| {
            format!(
                "{} undecided for {:.0} s (known by {})",
                p.transaction,
                p.age_ms as f64 / 1000.0,
                p.known_by.join(", ")
            )
        })
        .collect();
    let check = Check {
        id: "pending",
        name: "nothing stuck",
        ok: problems.is_empty(),
        summary: format!(
            "{} pending, oldest {:.1} s (stuck after {} s)",
            list.len(),
            list.first().map_or(0.0, |p| p.age_ms as f64 / 1000.0),
            opts.stuck_after.as_secs()
        ),
        problems,
    };
    (list, check)
}

// ---------------------------------------------------------------------------------------------
// Reading a live database.

/// Where to audit: a database, and optionally the nodes' URLs (to tell a stopped region's
/// lagging ledger from a broken one).
#[derive(Debug, Clone)]
pub struct Source {
    pub uri: String,
    pub database: String,
    /// (node name, base URL).
    pub nodes: Vec<(String, String)>,
}

impl Source {
    pub fn local(m: &saldo_stack::Manifest) -> Result<Source> {
        let db = m
            .mongodb
            .as_ref()
            .context("the stack runs no database; start it with `saldo up`")?;
        Ok(Source {
            uri: db.uri.clone(),
            database: db.database.clone(),
            nodes: m
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.url.clone()))
                .collect(),
        })
    }
}

fn ms_time(d: &Document, key: &str) -> Option<DateTime<Utc>> {
    let v = match d.get(key)? {
        Bson::Int64(v) => *v,
        Bson::Int32(v) => *v as i64,
        Bson::Double(v) => *v as i64,
        _ => return None,
    };
    Utc.timestamp_millis_opt(v).single()
}

async fn all(coll: &mongodb::Collection<Document>, what: &str) -> Result<Vec<Document>> {
    let mut cursor = coll
        .find(doc! {})
        .batch_size(1000)
        .await
        .with_context(|| format!("reading {what}"))?;
    let mut out = Vec::new();
    while let Some(d) = cursor
        .try_next()
        .await
        .with_context(|| format!("reading {what}"))?
    {
        if out.len() >= MAX_DOCS {
            bail!("{what} holds more than {MAX_DOCS} documents: too many to audit at once");
        }
        out.push(d);
    }
    Ok(out)
}

fn outcome(d: &Document, what: &str) -> Result<Option<OutcomeRecord>> {
    match d.get("outcome") {
        None | Some(Bson::Null) => Ok(None),
        Some(b) => bson::from_bson(b.clone())
            .map(Some)
            .with_context(|| format!("unreadable outcome in {what}")),
    }
}

fn lines(d: &Document) -> Option<Vec<ProductLine>> {
    let products = d.get_document("command").ok()?.get("products")?;
    bson::from_bson(products.clone()).ok()
}

/// How each node's app answers `GET /api/status` (anonymous): 200 running, 403 stopped.
pub async fn node_states(nodes: &[(String, String)]) -> BTreeMap<String, NodeState> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut out = BTreeMap::new();
    for (name, url) in nodes {
        let state = match http.get(format!("{url}/api/status")).send().await {
            Ok(r) if r.status().is_success() => NodeState::Running,
            Ok(r) if r.status().as_u16() == 403 => NodeState::Stopped,
            _ => NodeState::Unreachable,
        };
        out.insert(name.clone(), state);
    }
    out
}

/// Reads a [`Snapshot`] (see the module comment for the order and why).
pub async fn read(src: &Source) -> Result<Snapshot> {
    let mut opts = mongodb::options::ClientOptions::parse(&src.uri)
        .await
        .context("parsing the MongoDB connection string")?;
    opts.server_selection_timeout
        .get_or_insert(Duration::from_secs(10));
    opts.app_name.get_or_insert_with(|| "saldo-verify".into());
    let client = mongodb::Client::with_options(opts)?;
    let db = client.database(&src.database);
    let nodes = node_states(&src.nodes).await;
    let now = Utc::now();

    let mut snap = Snapshot {
        now,
        nodes,
        ..Default::default()
    };
    for d in all(&db.collection("idempotency"), "the idempotency collection").await? {
        if let Ok(tx) = d.get_str("_id") {
            let at = d
                .get_str("acceptedAt")
                .ok()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            snap.accepted.insert(tx.to_string(), at);
        }
    }

    let names = db
        .list_collection_names()
        .await
        .context("listing the database's collections")?;
    let ledgers: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix("ledger_").map(str::to_string))
        .collect();
    if ledgers.is_empty() {
        bail!(
            "database {} holds no ledger_<node> collection: is this Saldo's database?",
            src.database
        );
    }
    for node in &ledgers {
        let what = format!("ledger_{node}");
        let mut ledger = BTreeMap::new();
        for d in all(&db.collection(&what), &what).await? {
            let Ok(tx) = d.get_str("_id") else { continue };
            if let Some(l) = lines(&d) {
                snap.commands.entry(tx.to_string()).or_insert(l);
            }
            ledger.insert(
                tx.to_string(),
                Entry {
                    outcome: outcome(&d, &format!("{what} {tx}"))?,
                    received_at: ms_time(&d, "received_at_ms"),
                    recorded_at: ms_time(&d, "recorded_at_ms"),
                },
            );
        }
        snap.nodes.entry(node.clone()).or_insert(NodeState::Unknown);
        snap.ledgers.insert(node.clone(), ledger);
    }

    // The warehouse at one instant: a snapshot transaction (Cosmos DB allows it inside one
    // collection, which the warehouse is).
    let warehouse: mongodb::Collection<Document> = db.collection("warehouse");
    let mut session = client.start_session().await?;
    session
        .start_transaction()
        .read_concern(mongodb::options::ReadConcern::snapshot())
        .await
        .context("starting the warehouse snapshot")?;
    let mut cursor = warehouse
        .find(doc! {})
        .batch_size(1000)
        .session(&mut session)
        .await
        .context("reading the warehouse")?;
    let mut docs = Vec::new();
    while let Some(d) = cursor
        .next(&mut session)
        .await
        .transpose()
        .context("reading the warehouse")?
    {
        if docs.len() >= MAX_DOCS {
            bail!("the warehouse holds more than {MAX_DOCS} documents: too many to audit");
        }
        docs.push(d);
    }
    drop(cursor);
    session.abort_transaction().await.ok();
    for d in docs {
        let Ok(id) = d.get_str("_id") else { continue };
        if let Some(tx) = id.strip_prefix("tx:") {
            let o = outcome(&d, &format!("marker {id}"))?
                .with_context(|| format!("marker {id} has no outcome"))?;
            snap.markers.insert(tx.to_string(), o);
        } else if let Some(p) = id.strip_prefix("product:") {
            let pid: u64 = p
                .parse()
                .with_context(|| format!("warehouse document {id} has no numeric id"))?;
            let saldo = match d.get("saldo") {
                Some(Bson::Int64(v)) => *v,
                Some(Bson::Int32(v)) => *v as i64,
                Some(Bson::Double(v)) => *v as i64,
                _ => bail!("product {pid} has no integer saldo"),
            };
            snap.products.insert(pid, saldo);
        }
    }

    // Commands of transactions executed after the ledgers were read: read them now (a command
    // never changes once recorded).
    let missing: Vec<Bson> = snap
        .markers
        .keys()
        .filter(|t| !snap.commands.contains_key(*t))
        .map(|t| Bson::String(t.clone()))
        .collect();
    if !missing.is_empty() {
        for node in &ledgers {
            let coll: mongodb::Collection<Document> = db.collection(&format!("ledger_{node}"));
            for chunk in missing.chunks(500) {
                let docs: Vec<Document> = coll
                    .find(doc! {"_id": {"$in": chunk.to_vec()}})
                    .await?
                    .try_collect()
                    .await?;
                for d in docs {
                    if let (Ok(tx), Some(l)) = (d.get_str("_id"), lines(&d)) {
                        snap.commands.entry(tx.to_string()).or_insert(l);
                    }
                }
            }
        }
    }
    Ok(snap)
}

// ---------------------------------------------------------------------------------------------
// The command.

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Audit this database instead of the local stack's (e.g. the Cosmos DB connection string).
    #[arg(long, env = "SALDO_MONGODB_URI")]
    mongodb: Option<String>,
    /// The database name (with --mongodb).
    #[arg(long, default_value = "saldo")]
    database: String,
    /// A node as NAME=URL (with --mongodb; repeat), to tell a stopped region's lag from a fault.
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// Seconds after which a decided transaction must be in every running node's ledger.
    #[arg(long, default_value_t = 60)]
    horizon_secs: u64,
    /// Seconds after which an undecided transaction counts as stuck.
    #[arg(long, default_value_t = 120)]
    stuck_after_secs: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn verify(root: &std::path::Path, args: VerifyArgs) -> Result<std::process::ExitCode> {
    let src = match &args.mongodb {
        Some(uri) => Source {
            uri: uri.clone(),
            database: args.database.clone(),
            nodes: args
                .nodes
                .iter()
                .map(|n| {
                    n.split_once('=')
                        .map(|(a, b)| (a.to_string(), b.trim_end_matches('/').to_string()))
                        .with_context(|| format!("--node {n:?}: give NAME=URL"))
                })
                .collect::<Result<_>>()?,
        },
        None => Source::local(&saldo_stack::Manifest::load(root)?)?,
    };
    let opts = Options {
        horizon: Duration::from_secs(args.horizon_secs),
        stuck_after: Duration::from_secs(args.stuck_after_secs),
    };
    let report = check(&read(&src).await?, &opts);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
        println!();
        if report.ok() {
            println!("saldo verify: consistent");
        } else {
            println!(
                "saldo verify: INCONSISTENT ({})",
                report.failed().join(", ")
            );
        }
    }
    Ok(if report.ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use saldo_core::events::Quantity;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }
    fn line(id: u64, set: Option<i64>, change: Option<i64>) -> ProductLine {
        ProductLine {
            id,
            ean: id,
            name: format!("p{id}"),
            saldo: set,
            change,
        }
    }
    fn done(node: &str, q: &[(u64, i64)], at: i64) -> OutcomeRecord {
        OutcomeRecord {
            status: Outcome::Completed,
            node: node.into(),
            region: node.into(),
            reason: None,
            quantities: q
                .iter()
                .map(|&(id, saldo)| Quantity { id, saldo })
                .collect(),
            at: t(at),
            takeover: false,
        }
    }

    /// A consistent history: product 1 set to 5, then bought 2 and 1; two ledgers know it all.
    fn clean() -> Snapshot {
        let mut s = Snapshot {
            now: t(1000),
            ..Default::default()
        };
        let txs = [
            ("set", line(1, Some(5), None), 5),
            ("b1", line(1, None, Some(-2)), 3),
            ("b2", line(1, None, Some(-1)), 2),
        ];
        for (i, (tx, l, q)) in txs.iter().enumerate() {
            let o = done("a", &[(1, *q)], i as i64);
            s.markers.insert(tx.to_string(), o.clone());
            s.commands.insert(tx.to_string(), vec![l.clone()]);
            for node in ["a", "b"] {
                s.ledgers.entry(node.into()).or_default().insert(
                    tx.to_string(),
                    Entry {
                        outcome: Some(o.clone()),
                        received_at: Some(t(i as i64)),
                        recorded_at: Some(t(i as i64)),
                    },
                );
            }
        }
        s.products.insert(1, 2);
        s.nodes.insert("a".into(), NodeState::Running);
        s.nodes.insert("b".into(), NodeState::Running);
        s
    }

    fn failed(s: &Snapshot) -> Vec<&'static str> {
        check(s, &Options::default()).failed()
    }

    #[test]
    fn a_clean_history_passes_in_any_order_of_markers() {
        assert!(
            failed(&clean()).is_empty(),
            "{:#?}",
            check(&clean(), &Options::default())
        );
        // Times play no part in the stock check: shuffle them.
        let mut s = clean();
        for (i, m) in s.markers.values_mut().enumerate() {
            m.at = t(100 - i as i64);
        }
        assert!(failed(&s).is_empty());
    }

    #[test]
    fn a_second_segment_after_a_new_absolute_quantity_passes() {
        let mut s = clean();
        s.markers.insert("set2".into(), done("b", &[(1, 10)], 5));
        s.commands
            .insert("set2".into(), vec![line(1, Some(10), None)]);
        s.markers.insert("b3".into(), done("b", &[(1, 7)], 6));
        s.commands
            .insert("b3".into(), vec![line(1, None, Some(-3))]);
        s.products.insert(1, 7);
        assert_eq!(failed(&s), vec!["coverage"]); // the new ones are only in no ledger
    }

    #[test]
    fn a_tampered_quantity_fails_the_stock_check() {
        let mut s = clean();
        s.products.insert(1, 4);
        assert_eq!(failed(&s), vec!["stock"]);
    }

    #[test]
    fn one_more_application_is_named_applied_twice() {
        let mut s = clean();
        s.products.insert(1, 1); // b2's -1 once more
        let r = check(&s, &Options::default());
        assert_eq!(r.failed(), vec!["stock", "once"]);
        assert!(r.check("once").unwrap().problems[0].contains("b2"));
    }

    #[test]
    fn a_lost_marker_and_a_disagreeing_ledger_fail_the_marker_check() {
        let mut s = clean();
        s.markers.remove("b2");
        let r = check(&s, &Options::default());
        assert!(r.failed().contains(&"markers"));
        assert!(r.check("markers").unwrap().problems[0].contains("lost commit"));

        let mut s = clean();
        s.ledgers
            .get_mut("b")
            .unwrap()
            .get_mut("b1")
            .unwrap()
            .outcome = Some(done("b", &[(1, 3)], 1));
        assert_eq!(failed(&s), vec!["markers", "once"]);
    }

    #[test]
    fn a_ledger_missing_an_old_transaction_fails_unless_its_region_is_stopped() {
        let mut s = clean();
        s.ledgers.get_mut("b").unwrap().remove("b1");
        assert_eq!(failed(&s), vec!["coverage"]);
        s.nodes.insert("b".into(), NodeState::Stopped);
        assert!(failed(&s).is_empty());
        // A recent one may be missing anywhere.
        let mut s = clean();
        s.ledgers.get_mut("b").unwrap().remove("b2");
        s.markers.get_mut("b2").unwrap().at = t(990);
        assert!(failed(&s).is_empty());
    }

    #[test]
    fn negative_stock_and_stuck_transactions_are_named() {
        let mut s = clean();
        s.products.insert(1, -1);
        assert!(failed(&s).contains(&"negative"));

        let mut s = clean();
        s.accepted.insert("lost".into(), Some(t(0)));
        s.accepted.insert("fresh".into(), Some(t(999)));
        let r = check(&s, &Options::default());
        assert_eq!(r.failed(), vec!["pending"]);
        assert_eq!(r.pending.len(), 2);
        assert_eq!(r.pending[0].transaction, "lost");
    }
}
