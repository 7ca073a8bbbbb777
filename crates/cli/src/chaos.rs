//! `saldo chaos`: a Jepsen-style test of a running local stack.
//!
//! Shoppers buy through the public API ([`crate::load`]) while a seeded nemesis injects one
//! fault at a time: SIGKILL of a component's process group (database, topic, a region's host,
//! the API), SIGKILL of one handler instance of a region (its host restarts it), SIGSTOP /
//! SIGCONT of a process, or a region stopped and started as Azure stops a Function App.
//! Restarting a killed component is the stack's job (`saldo up`'s supervisor); chaos waits,
//! bounded, for it to answer again and counts a component that never does as an anomaly.
//!
//! Afterwards it checks (each failure is an anomaly, and the exit status is 1):
//! - every accepted purchase is terminal, and the outcome the shopper saw is the warehouse's;
//! - per product, final stock = initial - the units of its completed purchases (counter check);
//! - `verify`'s checks: markers agree with ledgers, nothing applied twice, every ledger holds
//!   every transaction with the same outcome, nothing negative, nothing stuck;
//! - a resubmitted key got the same transaction; the API never refused a valid order.
//!
//! It reports the time to settle after the last fault, prints a table and writes, under
//! `.saldo/chaos/<seed>/`, `history.json` (faults, purchases, checks) and `timeline.png`.
//! `--seed` replays the same fault schedule (the same kinds, targets, holds and gaps, in order).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use saldo_stack::Manifest;
use saldo_stack::component::Health;
use saldo_stack::manifest::HostAction;
use serde::Serialize;

use crate::load::{self, Purchase, Shop};
use crate::verify;

/// The products chaos buys (its own, so the demo catalogue and the benchmark are untouched).
pub const PRODUCTS: [u64; 4] = [9101, 9102, 9103, 9104];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// SIGKILL the database (SecantusDB).
    KillDb,
    /// SIGKILL the Event Grid topic.
    KillTopic,
    /// SIGKILL a region's whole host (the Function App's instance and its handlers).
    KillHost,
    /// SIGKILL one handler instance of a region (its host restarts it).
    KillHandler,
    /// SIGKILL the API's host.
    KillApi,
    /// SIGSTOP a process (database, topic, a handler or the API) for a while, then SIGCONT.
    Pause,
    /// Stop a region's app (403 to everything) for a while, then start it.
    Region,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::KillDb => "kill-db",
            Kind::KillTopic => "kill-topic",
            Kind::KillHost => "kill-host",
            Kind::KillHandler => "kill-handler",
            Kind::KillApi => "kill-api",
            Kind::Pause => "pause",
            Kind::Region => "region",
        }
    }
    pub const ALL: [Kind; 7] = [
        Kind::KillDb,
        Kind::KillTopic,
        Kind::KillHost,
        Kind::KillHandler,
        Kind::KillApi,
        Kind::Pause,
        Kind::Region,
    ];
}

#[derive(clap::Args, Clone)]
pub struct ChaosArgs {
    /// Seconds of load (faults stop a little before the load does).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Seed of the fault schedule and the shoppers' choices (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Purchases started per second.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Fault kinds to inject (comma-separated); each occurs at least once when time allows.
    #[arg(long, value_delimiter = ',', default_values_t = Kind::ALL.to_vec(), value_enum)]
    pub faults: Vec<Kind>,
    /// Stock of each chaos product at the start (default: about three quarters of what the
    /// shoppers will ask for, so that the last purchases are rejected for lack of stock).
    #[arg(long)]
    pub stock: Option<i64>,
    /// Longest a fault is held (a pause, a stopped region), in seconds.
    #[arg(long, default_value_t = 4.0)]
    pub max_hold: f64,
    /// How long a killed component may take to answer again before it counts as lost.
    #[arg(long, default_value_t = 60)]
    pub recover_secs: u64,
    /// How long after the load, at most, the stack may take to settle.
    #[arg(long, default_value_t = 90)]
    pub settle_secs: u64,
    /// Count it as an anomaly when purchases accepted before the last fault ended are not all
    /// terminal within this many seconds of it (the fleet's promise is 10 s).
    #[arg(long)]
    pub max_settle_secs: Option<u64>,
    /// Add latency and loss between regions with network namespaces (root). Not built yet.
    #[arg(long)]
    pub netem: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Planned {
    pub kind: Kind,
    /// Chooses among the targets of the kind (taken modulo their number at run time).
    pub target: u32,
    pub hold_ms: u64,
    /// Quiet time before the fault.
    pub gap_ms: u64,
}

/// The fault schedule of a seed: every kind once (in a seeded order), then seeded picks.
pub fn plan(seed: u64, kinds: &[Kind], max_hold: f64, n: usize) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<Kind> = kinds.to_vec();
    order.sort();
    order.dedup();
    order.shuffle(&mut rng);
    let max_hold_ms = (max_hold * 1000.0).max(500.0) as u64;
    (0..n)
        .map(|i| Planned {
            kind: if i < order.len() {
                order[i]
            } else {
                order[rng.random_range(0..order.len())]
            },
            target: rng.random(),
            hold_ms: rng.random_range(500..=max_hold_ms),
            gap_ms: rng.random_range(1000..=3000),
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    pub kind: Kind,
    pub target: String,
    pub start_ms: u64,
    /// When the target answered again (or the fault was lifted and it answered).
    pub healed_ms: u64,
    pub recovered: bool,
    pub detail: String,
}

/// What a fault can act on, from the manifest (read again before each fault: a supervisor that
/// restarts a process changes its pid).
struct Target {
    name: String,
    pgid: i32,
    health: Health,
}

fn targets(m: &Manifest) -> Vec<Target> {
    m.processes
        .iter()
        .filter_map(|p| {
            let health = if p.name == "mongodb" {
                Health::mongodb(&m.mongodb.as_ref()?.uri)
            } else if p.name == "topic" {
                Health::topic(&m.topic.as_ref()?.management)
            } else if p.name == "api" {
                Health::api(&m.api.as_ref()?.url)
            } else if let Some(region) = p.name.strip_prefix("worker-") {
                Health::worker(&m.node(region)?.url)
            } else {
                return None;
            };
            Some(Target {
                name: p.name.clone(),
                pgid: p.pid,
                health,
            })
        })
        .collect()
}

/// The children of `pid` (a host's handler instances), from /proc.
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out.sort();
    out
}

async fn wait_healthy(h: &Health, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if h.probe().await.is_ok() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What must be undone if chaos is interrupted mid-fault.
#[derive(Clone)]
enum Undo {
    Cont(Vec<i32>),
    Start(saldo_stack::manifest::NodeEntry),
}

async fn undo(u: &Undo) {
    match u {
        Undo::Cont(pids) => {
            for p in pids {
                let _ = kill(Pid::from_raw(*p), Signal::SIGCONT);
            }
        }
        Undo::Start(node) => {
            if let Err(e) = node.control(HostAction::Start).await {
                eprintln!("saldo chaos: could not start {} again: {e:#}", node.region);
            }
        }
    }
}

/// Applies one fault, holds it, lifts it and waits until the target answers again.
async fn inject(
    root: &Path,
    p: &Planned,
    shop: &Shop,
    recover: Duration,
    pending_undo: &Mutex<Option<Undo>>,
) -> Result<Fault> {
    let m = Manifest::load(root)?;
    let all = targets(&m);
    let pick = |names: &dyn Fn(&str) -> bool| -> Result<&Target> {
        let c: Vec<&Target> = all.iter().filter(|t| names(&t.name)).collect();
        if c.is_empty() {
            bail!("no target for {}", p.kind.name());
        }
        Ok(c[p.target as usize % c.len()])
    };
    let start_ms = shop.ms();
    let hold = Duration::from_millis(p.hold_ms);
    let (target, health, detail) = match p.kind {
        Kind::KillDb | Kind::KillTopic | Kind::KillHost | Kind::KillApi => {
            let t = pick(&|n| match p.kind {
                Kind::KillDb => n == "mongodb",
                Kind::KillTopic => n == "topic",
                Kind::KillApi => n == "api",
                _ => n.starts_with("worker-"),
            })?;
            killpg(Pid::from_raw(t.pgid), Signal::SIGKILL)
                .with_context(|| format!("SIGKILL {} (group {})", t.name, t.pgid))?;
            (
                t.name.clone(),
                t.health.clone(),
                format!("SIGKILL group {}", t.pgid),
            )
        }
        Kind::KillHandler => {
            let t = pick(&|n| n.starts_with("worker-"))?;
            let kids = children(t.pgid);
            if kids.is_empty() {
                bail!("{} has no handler process to kill", t.name);
            }
            let victim = kids[(p.target as usize / 7) % kids.len()];
            kill(Pid::from_raw(victim), Signal::SIGKILL)
                .with_context(|| format!("SIGKILL handler {victim} of {}", t.name))?;
            (
                t.name.clone(),
                t.health.clone(),
                format!("SIGKILL handler pid {victim} (1 of {})", kids.len()),
            )
        }
        Kind::Pause => {
            let t = pick(&|n| n != "spa")?;
            // A region's handler instance, or the whole process group of anything else.
            let pids = if t.name.starts_with("worker-") {
                let kids = children(t.pgid);
                match kids.get((p.target as usize / 7) % kids.len().max(1)) {
                    Some(k) => vec![*k],
                    None => vec![t.pgid],
                }
            } else {
                let mut v = vec![t.pgid];
                v.extend(children(t.pgid));
                v
            };
            *pending_undo.lock().unwrap() = Some(Undo::Cont(pids.clone()));
            for pid in &pids {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
            }
            tokio::time::sleep(hold).await;
            for pid in &pids {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGCONT);
            }
            *pending_undo.lock().unwrap() = None;
            (
                t.name.clone(),
                t.health.clone(),
                format!("SIGSTOP {pids:?} for {} ms", p.hold_ms),
            )
        }
        Kind::Region => {
            let t = pick(&|n| n.starts_with("worker-"))?;
            let region = t.name.trim_start_matches("worker-");
            let node = m.require_node(region)?.clone();
            node.control(HostAction::Stop).await?;
            *pending_undo.lock().unwrap() = Some(Undo::Start(node.clone()));
            tokio::time::sleep(hold).await;
            node.control(HostAction::Start).await?;
            *pending_undo.lock().unwrap() = None;
            (
                t.name.clone(),
                t.health.clone(),
                format!("stopped for {} ms", p.hold_ms),
            )
        }
    };
    let recovered = wait_healthy(&health, recover).await;
    Ok(Fault {
        kind: p.kind,
        target,
        start_ms,
        healed_ms: shop.ms(),
        recovered,
        detail,
    })
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub seed: u64,
    pub purchases: usize,
    pub accepted: usize,
    pub completed: usize,
    pub rejected: usize,
    pub not_terminal: usize,
    pub gave_up: usize,
    pub client_retries: u64,
    pub resubmitted: usize,
    pub faults: BTreeMap<String, usize>,
    pub settle_ms: Option<u64>,
    pub latency_p50_ms: u64,
    pub latency_p99_ms: u64,
    pub latency_max_ms: u64,
    pub anomalies: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct History<'a> {
    seed: u64,
    seconds: u64,
    rate: f64,
    kinds: Vec<&'static str>,
    initial_stock: BTreeMap<u64, i64>,
    final_stock: BTreeMap<u64, i64>,
    schedule: &'a [Planned],
    faults: &'a [Fault],
    purchases: &'a [Purchase],
    verify: &'a verify::Report,
    summary: &'a Summary,
}

fn describe_status(o: saldo_core::events::Outcome) -> &'static str {
    match o {
        saldo_core::events::Outcome::Completed => "completed",
        saldo_core::events::Outcome::Rejected => "rejected",
    }
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Restarts every region that is stopped, so a run starts (and ends) with the whole fleet.
async fn start_all_regions(m: &Manifest) {
    for n in &m.nodes {
        let _ = n.control(HostAction::Start).await;
    }
}

/// Polls verify until it passes or `within` is over; returns the last report.
pub async fn settle_verify(
    src: &verify::Source,
    within: Duration,
    stuck_after: Duration,
) -> Result<verify::Report> {
    let opts = verify::Options {
        horizon: Duration::ZERO,
        stuck_after,
    };
    let deadline = Instant::now() + within;
    loop {
        let r = match verify::read(src).await {
            Ok(s) => Some(verify::check(&s, &opts)),
            Err(e) if Instant::now() < deadline => {
                eprintln!("saldo: verify could not read the database yet: {e:#}");
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(r) = r
            && (r.ok() || Instant::now() > deadline)
        {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

pub async fn chaos(root: &Path, args: ChaosArgs) -> Result<ExitCode> {
    if args.netem {
        bail!(
            "--netem is not built yet: it needs each region in its own network namespace, \
             which `saldo up` does not do; run without it"
        );
    }
    if args.faults.is_empty() {
        bail!("--faults names no fault kind");
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64 % 1_000_000)
            .unwrap_or(1)
    });
    let m = Manifest::load(root)?;
    let src = verify::Source::local(&m)?;
    let shop = Shop::local(&m)?;
    let out_dir = root.join("chaos").join(seed.to_string());
    std::fs::create_dir_all(&out_dir)?;
    println!(
        "saldo chaos: seed {seed}, {} s of load at {}/s, faults {}",
        args.seconds,
        args.rate,
        args.faults
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(",")
    );

    start_all_regions(&m).await;
    // Two units per purchase on average, spread over the products.
    let asked = args.rate * args.seconds as f64 * 2.0 / PRODUCTS.len() as f64;
    let per_product = args
        .stock
        .unwrap_or(((asked * 0.75) as i64).clamp(5, 100_000));
    let initial: BTreeMap<u64, i64> = PRODUCTS.iter().map(|&p| (p, per_product)).collect();
    let stock: Vec<(u64, i64)> = initial.iter().map(|(&p, &q)| (p, q)).collect();
    load::restock(&m, &shop, "chaos", &stock).await?;
    println!("saldo chaos: restocked {PRODUCTS:?} to {per_product} each");

    let schedule = plan(seed, &args.faults, args.max_hold, 500);
    let run_start = Instant::now();
    let load_end = run_start + Duration::from_secs(args.seconds);
    // Faults start after a short warm-up and stop early enough to let the last one heal.
    let faults_from = run_start + Duration::from_secs(3.min(args.seconds / 4));
    let faults_until = load_end - Duration::from_secs((args.seconds / 6).clamp(2, 10));
    let deadline = load_end + Duration::from_secs(args.settle_secs);

    let pending_undo: Arc<Mutex<Option<Undo>>> = Arc::new(Mutex::new(None));
    let nemesis = {
        let root = root.to_path_buf();
        let shop = shop.clone();
        let schedule = schedule.clone();
        let recover = Duration::from_secs(args.recover_secs);
        let pending_undo = pending_undo.clone();
        tokio::spawn(async move {
            let mut done: Vec<Fault> = Vec::new();
            let mut errors: Vec<String> = Vec::new();
            tokio::time::sleep_until(faults_from.into()).await;
            for p in &schedule {
                tokio::time::sleep(Duration::from_millis(p.gap_ms)).await;
                if Instant::now() + Duration::from_millis(p.hold_ms) > faults_until {
                    break;
                }
                match inject(&root, p, &shop, recover, &pending_undo).await {
                    Ok(f) => {
                        println!(
                            "  {:>6.1} s  {:<12} {:<24} {} ({} in {:.1} s)",
                            f.start_ms as f64 / 1000.0,
                            f.kind.name(),
                            f.target,
                            f.detail,
                            if f.recovered {
                                "answered again"
                            } else {
                                "DID NOT COME BACK"
                            },
                            (f.healed_ms - f.start_ms) as f64 / 1000.0
                        );
                        done.push(f);
                    }
                    Err(e) => {
                        println!("  {} failed: {e:#}", p.kind.name());
                        errors.push(format!("{}: {e:#}", p.kind.name()));
                    }
                }
            }
            (done, errors)
        })
    };

    let shoppers = load::run(
        &shop,
        load::Load {
            rate: args.rate,
            until: load_end,
            deadline,
            products: PRODUCTS.to_vec(),
            max_quantity: 3,
            resubmit: 0.1,
            seed,
        },
        |_| {},
    );
    let purchases = tokio::select! {
        p = shoppers => p,
        _ = tokio::signal::ctrl_c() => {
            let current = pending_undo.lock().unwrap().clone();
            if let Some(u) = current {
                undo(&u).await;
            }
            start_all_regions(&m).await;
            bail!("interrupted: the current fault was lifted");
        }
    };
    let (faults, fault_errors) = nemesis.await.context("the nemesis task failed")?;
    start_all_regions(&m).await;

    // Whatever a purchase that never got its 202 did: its transaction id follows from its key.
    let mut purchases = purchases;
    for p in purchases.iter_mut().filter(|p| p.transaction.is_none()) {
        let tx = saldo_api::commands::transaction_id(&p.key);
        if let Some(s) = shop.status(&tx).await
            && s.status != "pending"
        {
            p.status = s.status;
            p.transaction = Some(tx);
        }
    }

    println!("saldo chaos: load over; verifying ...");
    let report = settle_verify(
        &src,
        Duration::from_secs(args.settle_secs),
        Duration::from_secs(args.settle_secs),
    )
    .await?;
    let snap = verify::read(&src).await?;

    let mut anomalies: Vec<String> = Vec::new();
    for e in &fault_errors {
        anomalies.push(format!("fault could not be injected: {e}"));
    }
    for f in faults.iter().filter(|f| !f.recovered) {
        anomalies.push(format!(
            "{} did not answer within {} s of {} at {:.1} s (is `saldo up`'s supervisor restarting it?)",
            f.target,
            args.recover_secs,
            f.kind.name(),
            f.start_ms as f64 / 1000.0
        ));
    }
    let accepted: Vec<&Purchase> = purchases
        .iter()
        .filter(|p| p.accepted_ms.is_some())
        .collect();
    for p in &accepted {
        let tx = p.transaction.as_deref().unwrap_or_default();
        if p.status == "pending" {
            let late = snap
                .markers
                .get(tx)
                .map_or("and still undecided".to_string(), |m| {
                    format!(
                        "(decided {} later, by {})",
                        describe_status(m.status),
                        m.node
                    )
                });
            anomalies.push(format!(
                "purchase {} ({tx}) accepted but not terminal within {} s of the load's end {late}",
                p.n, args.settle_secs
            ));
        }
        let marker = snap.markers.get(tx).map(|m| describe_status(m.status));
        if p.status != "pending" && marker != Some(p.status.as_str()) {
            anomalies.push(format!(
                "purchase {} ({tx}): the shopper was told {}, the warehouse marker says {}",
                p.n,
                p.status,
                marker.unwrap_or("nothing (lost)")
            ));
        }
    }
    for p in &purchases {
        if let Some(r) = &p.refused {
            anomalies.push(format!("purchase {} refused: {r}", p.n));
        }
        if p.resubmit_same == Some(false) {
            anomalies.push(format!(
                "purchase {}: resubmitting its key named another transaction",
                p.n
            ));
        }
    }
    // Counter check: what the completed purchases took, against what the warehouse holds.
    let mut expected = initial.clone();
    for p in &purchases {
        let tx = p.transaction.as_deref().unwrap_or_default();
        if snap
            .markers
            .get(tx)
            .is_some_and(|m| m.status == saldo_core::events::Outcome::Completed)
        {
            for (id, q) in &p.lines {
                *expected.entry(*id).or_default() -= q;
            }
        }
    }
    let final_stock: BTreeMap<u64, i64> = PRODUCTS
        .iter()
        .map(|p| (*p, snap.products.get(p).copied().unwrap_or(i64::MIN)))
        .collect();
    for (id, want) in &expected {
        let got = final_stock[id];
        if got != *want {
            anomalies.push(format!(
                "counter check: product {id} holds {got}, but {} - completed purchases = {want}",
                initial[id]
            ));
        }
    }
    for c in report.checks.iter().filter(|c| !c.ok) {
        for pr in c.problems.iter().take(20) {
            anomalies.push(format!("verify {}: {pr}", c.id));
        }
    }

    let mut lat: Vec<u64> = accepted.iter().filter_map(|p| p.latency_ms()).collect();
    lat.sort();
    // Settling: how long after the last fault ended every purchase accepted before then was
    // terminal (purchases accepted later are the calm that follows, not the storm).
    let settle_ms = faults.iter().map(|f| f.healed_ms).max().map(|heal| {
        accepted
            .iter()
            .filter(|p| p.accepted_ms.is_some_and(|a| a <= heal))
            .filter_map(|p| p.terminal_ms)
            .max()
            .map_or(0, |t| t.saturating_sub(heal))
    });
    if let (Some(limit), Some(ms)) = (args.max_settle_secs, settle_ms)
        && ms > limit * 1000
    {
        anomalies.push(format!(
            "settling took {:.1} s after the last fault, more than --max-settle-secs {limit}",
            ms as f64 / 1000.0
        ));
    }
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for f in &faults {
        *by_kind.entry(f.kind.name().to_string()).or_default() += 1;
    }
    for k in &args.faults {
        if !by_kind.contains_key(k.name()) {
            println!(
                "saldo chaos: note: no {} fault fitted into {} s",
                k.name(),
                args.seconds
            );
        }
    }
    let summary = Summary {
        seed,
        purchases: purchases.len(),
        accepted: accepted.len(),
        completed: accepted.iter().filter(|p| p.status == "completed").count(),
        rejected: accepted.iter().filter(|p| p.status == "rejected").count(),
        not_terminal: accepted.iter().filter(|p| p.status == "pending").count(),
        gave_up: purchases.iter().filter(|p| p.accepted_ms.is_none()).count(),
        client_retries: purchases
            .iter()
            .map(|p| p.attempts.saturating_sub(1) as u64)
            .sum(),
        resubmitted: purchases
            .iter()
            .filter(|p| p.resubmit_same.is_some())
            .count(),
        faults: by_kind,
        settle_ms,
        latency_p50_ms: quantile(&lat, 0.5),
        latency_p99_ms: quantile(&lat, 0.99),
        latency_max_ms: lat.last().copied().unwrap_or(0),
        anomalies: anomalies.clone(),
    };

    let history = History {
        seed,
        seconds: args.seconds,
        rate: args.rate,
        kinds: args.faults.iter().map(|k| k.name()).collect(),
        initial_stock: initial.clone(),
        final_stock: final_stock.clone(),
        schedule: &schedule[..faults.len().min(schedule.len())],
        faults: &faults,
        purchases: &purchases,
        verify: &report,
        summary: &summary,
    };
    let json_path = out_dir.join("history.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&history)?)?;
    let png_path = out_dir.join("timeline.png");
    let plotted = crate::plot::timeline(&png_path, seed, &purchases, &faults);

    print_summary(&summary, &report, &expected, &final_stock);
    println!();
    println!("history   {}", json_path.display());
    match plotted {
        Ok(()) => println!("timeline  {}", png_path.display()),
        Err(e) => println!("timeline  not written: {e:#}"),
    }
    if anomalies.is_empty() {
        println!("saldo chaos: seed {seed}: no anomalies");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "saldo chaos: seed {seed}: {} ANOMALIES (replay with --seed {seed})",
            anomalies.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

fn print_summary(
    s: &Summary,
    report: &verify::Report,
    expected: &BTreeMap<u64, i64>,
    got: &BTreeMap<u64, i64>,
) {
    println!();
    let row = |k: &str, v: String| println!("{k:<34} {v}");
    row("purchases started", s.purchases.to_string());
    row(
        "accepted (202)",
        format!(
            "{} ({} client retries, {} resubmitted keys)",
            s.accepted, s.client_retries, s.resubmitted
        ),
    );
    row("  completed", s.completed.to_string());
    row("  rejected (out of stock)", s.rejected.to_string());
    row("  not terminal", s.not_terminal.to_string());
    row("never accepted (gave up)", s.gave_up.to_string());
    row(
        "faults",
        s.faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    row(
        "latency 202 -> terminal",
        format!(
            "p50 {} ms, p99 {} ms, max {} ms",
            s.latency_p50_ms, s.latency_p99_ms, s.latency_max_ms
        ),
    );
    row(
        "settled after the last fault",
        s.settle_ms
            .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
    );
    for (id, want) in expected {
        row(
            &format!("stock of {id}"),
            format!(
                "{} (expected {want}) {}",
                got[id],
                if got[id] == *want { "ok" } else { "MISMATCH" }
            ),
        );
    }
    for c in &report.checks {
        row(
            &format!("verify: {}", c.name),
            if c.ok {
                "ok".into()
            } else {
                format!("FAIL ({})", c.problems.len())
            },
        );
    }
    row("anomalies", s.anomalies.len().to_string());
    for a in s.anomalies.iter().take(30) {
        println!("  - {a}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_schedule_and_every_kind_comes_first() {
        let a = plan(7, &Kind::ALL, 4.0, 20);
        let b = plan(7, &Kind::ALL, 4.0, 20);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        let mut first: Vec<Kind> = a[..Kind::ALL.len()].iter().map(|p| p.kind).collect();
        first.sort();
        assert_eq!(first, Kind::ALL.to_vec());
        let c = plan(8, &Kind::ALL, 4.0, 20);
        assert_ne!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&c).unwrap()
        );
        assert!(a.iter().all(|p| (500..=4000).contains(&p.hold_ms)));
    }

    #[test]
    fn only_the_chosen_kinds_are_planned() {
        let p = plan(1, &[Kind::KillDb, Kind::KillTopic], 2.0, 10);
        assert!(
            p.iter()
                .all(|p| matches!(p.kind, Kind::KillDb | Kind::KillTopic))
        );
    }
}
