//! The checks: pure functions of a [`Snapshot`].

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use saldo_core::events::{Operation, Outcome};
use saldo_store::OutcomeRecord;

use super::{Check, NodeState, Options, PendingTx, Report, Snapshot};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Entry;
    use chrono::TimeZone;
    use saldo_core::events::{ProductLine, Quantity};

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
