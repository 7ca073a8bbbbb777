//! The demo's closing table: what the purchases, the catch-up and the audit came to.

use std::time::Duration;

use super::{DemoArgs, Outage, ms_quantile};
use crate::load::Purchase;
use crate::verify;

/// How the stopped region caught up: the purchases it missed, and how long they took to reach
/// its ledger after it answered.
pub(super) struct CatchUp {
    pub(super) missed: usize,
    pub(super) took: Option<Duration>,
}

/// The closing table; returns whether the demo passed (verify, nothing lost, caught up, nothing
/// executed by the stopped region).
pub(super) fn print_figures(
    args: &DemoArgs,
    node_name: &str,
    purchases: &[Purchase],
    outage: &Outage,
    report: &verify::Report,
    caught: &CatchUp,
) -> bool {
    let (down_at, up_cmd_at) = (outage.down_at, outage.up_cmd_at);
    let (missed, catchup_time) = (caught.missed, caught.took);
    // Figures.
    let accepted: Vec<&Purchase> = purchases
        .iter()
        .filter(|p| p.accepted_ms.is_some())
        .collect();
    let completed = accepted.iter().filter(|p| p.status == "completed").count();
    let rejected = accepted.iter().filter(|p| p.status == "rejected").count();
    let lost = accepted.iter().filter(|p| p.status == "pending").count();
    // Posted after the stop returned and before the start was asked for (one posted earlier
    // may have reached the region before it stopped).
    let during: Vec<&&Purchase> = accepted
        .iter()
        .filter(|p| p.posted_ms >= down_at && p.posted_ms < up_cmd_at)
        .collect();
    let taken: Vec<&&&Purchase> = during.iter().filter(|p| p.takeover).collect();
    let taken_lat = ms_quantile(taken.iter().filter_map(|p| p.latency_ms()).collect(), 0.5);
    let taken_max = taken
        .iter()
        .filter_map(|p| p.latency_ms())
        .max()
        .unwrap_or(0);
    let executed_by_stopped = during
        .iter()
        .filter(|p| p.executed_by.as_deref() == Some(node_name))
        .count();

    println!();
    println!("{:<46} figure", "what");
    row("purchases accepted", accepted.len().to_string());
    row("  completed", completed.to_string());
    row("  rejected", rejected.to_string());
    row("lost (accepted, never terminal)", lost.to_string());
    row(
        &format!("bought while {} was down", args.region),
        format!("{} (executed by {})", during.len(), by_executor(&during)),
    );
    row(
        &format!("  executed by {} while stopped", args.region),
        executed_by_stopped.to_string(),
    );
    row(
        "  taken over from a silent owner",
        format!(
            "{} (202 -> completed p50 {taken_lat} ms, max {taken_max} ms)",
            taken.len()
        ),
    );
    row(
        &format!("{} caught up after start", args.region),
        match catchup_time {
            Some(d) => format!(
                "{missed} purchases in its ledger {:.1} s after it answered",
                d.as_secs_f64()
            ),
            None => format!("NOT within {} s", args.settle_secs),
        },
    );
    print_audit_rows(report);

    report.ok() && lost == 0 && catchup_time.is_some() && executed_by_stopped == 0
}

/// One row of the closing table.
fn row(k: &str, v: String) {
    println!("{k:<46} {v}");
}

/// Purchases per executing region, as `region n, ...`.
fn by_executor(list: &[&&Purchase]) -> String {
    let mut m = std::collections::BTreeMap::<String, usize>::new();
    for p in list {
        *m.entry(p.executed_by.clone().unwrap_or_else(|| "?".into()))
            .or_default() += 1;
    }
    m.into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The closing table's rows from `verify`'s checks.
fn print_audit_rows(report: &verify::Report) {
    let once = report.check("once").is_some_and(|c| c.ok);
    let negative = report.check("negative").is_some_and(|c| c.ok);
    let markers = report.check("markers").is_some_and(|c| c.ok);
    let coverage = report.check("coverage").is_some_and(|c| c.ok);
    let stock_ok = report.check("stock").is_some_and(|c| c.ok);
    row(
        "markers agree with every ledger",
        if markers { "yes".into() } else { "NO".into() },
    );
    row(
        "stock follows its history",
        if stock_ok { "yes".into() } else { "NO".into() },
    );
    row(
        "applied twice",
        if once {
            "0".into()
        } else {
            "SOME (see verify)".into()
        },
    );
    row(
        "stock ever negative",
        if negative {
            "never (every recorded quantity >= 0)".into()
        } else {
            "YES".into()
        },
    );
    row(
        "every ledger holds every transaction",
        if coverage { "yes".into() } else { "NO".into() },
    );
}
