//! What a chaos run found: its summary, its history file, and the table it prints.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::nemesis::Fault;
use super::{ChaosArgs, PRODUCTS, Planned, Run};
use crate::load::Purchase;
use crate::verify;

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
pub(super) struct History<'a> {
    pub(super) seed: u64,
    pub(super) seconds: u64,
    pub(super) rate: f64,
    pub(super) kinds: Vec<&'static str>,
    pub(super) initial_stock: BTreeMap<u64, i64>,
    pub(super) final_stock: BTreeMap<u64, i64>,
    pub(super) schedule: &'a [Planned],
    pub(super) faults: &'a [Fault],
    pub(super) purchases: &'a [Purchase],
    pub(super) verify: &'a verify::Report,
    pub(super) summary: &'a Summary,
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

pub(super) fn print_summary(
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

/// What the checks after a run found, and the figures of its summary.
pub(super) struct Found {
    pub(super) summary: Summary,
    /// Per product: the initial stock minus its completed purchases.
    pub(super) expected: BTreeMap<u64, i64>,
    pub(super) final_stock: BTreeMap<u64, i64>,
}

/// The checks after the run (each failure an anomaly, in this order: faults, purchases, the
/// counter check, verify, settling) and the summary.
pub(super) fn analyse(
    args: &ChaosArgs,
    seed: u64,
    initial: &BTreeMap<u64, i64>,
    run: &Run,
    snap: &verify::Snapshot,
    report: &verify::Report,
) -> Found {
    let (purchases, faults) = (&run.purchases[..], &run.faults[..]);
    let mut anomalies: Vec<String> = Vec::new();
    for e in &run.fault_errors {
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
    purchase_anomalies(purchases, &accepted, snap, args.settle_secs, &mut anomalies);
    let (expected, final_stock) = counter_check(initial, purchases, snap, &mut anomalies);
    for c in report.checks.iter().filter(|c| !c.ok) {
        for pr in c.problems.iter().take(20) {
            anomalies.push(format!("verify {}: {pr}", c.id));
        }
    }

    let mut lat: Vec<u64> = accepted.iter().filter_map(|p| p.latency_ms()).collect();
    lat.sort();
    let settle_ms = settle_time(args, faults, &accepted, &mut anomalies);
    let by_kind = faults_by_kind(args, faults);
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
        anomalies,
    };
    Found {
        summary,
        expected,
        final_stock,
    }
}

/// Settling: how long after the last fault ended every purchase accepted before then was
/// terminal (purchases accepted later are the calm that follows, not the storm); longer than
/// `--max-settle-secs` is an anomaly.
fn settle_time(
    args: &ChaosArgs,
    faults: &[Fault],
    accepted: &[&Purchase],
    anomalies: &mut Vec<String>,
) -> Option<u64> {
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
    settle_ms
}

/// Faults injected per kind; a note for each chosen kind that did not fit into the run.
fn faults_by_kind(args: &ChaosArgs, faults: &[Fault]) -> BTreeMap<String, usize> {
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for f in faults {
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
    by_kind
}

/// Every accepted purchase terminal, as the warehouse says; nothing refused; a resubmitted key
/// naming the same transaction.
fn purchase_anomalies(
    purchases: &[Purchase],
    accepted: &[&Purchase],
    snap: &verify::Snapshot,
    settle_secs: u64,
    anomalies: &mut Vec<String>,
) {
    for p in accepted {
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
                p.n, settle_secs
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
    for p in purchases {
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
}

/// Counter check: what the completed purchases took, against what the warehouse holds.
/// Returns the expected and the final stock.
fn counter_check(
    initial: &BTreeMap<u64, i64>,
    purchases: &[Purchase],
    snap: &verify::Snapshot,
    anomalies: &mut Vec<String>,
) -> (BTreeMap<u64, i64>, BTreeMap<u64, i64>) {
    let mut expected = initial.clone();
    for p in purchases {
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
    (expected, final_stock)
}
