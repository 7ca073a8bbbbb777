//! The invariants checked after each run (see the crate's documentation).

use std::collections::{BTreeMap, BTreeSet};

use saldo_core::events::{Operation, ProductLine};
use saldo_core::views::LedgerState;
use saldo_store::{Applied, OutcomeRecord};

use super::{World, url};

type Commands<'a> = BTreeMap<&'a str, &'a Vec<ProductLine>>;
type Markers = BTreeMap<String, OutcomeRecord>;

/// The invariants (see the crate's documentation).
pub(super) fn check(w: &World) -> Result<(), String> {
    let applied = w.db.applied();
    let markers = w.db.markers();
    let commands: Commands = w.commands.iter().map(|(t, l)| (t.as_str(), l)).collect();
    applications_chain(w, &applied, &markers, &commands)?;
    let union = every_command_executed(w, &markers, &commands)?;
    ledgers_complete(w, &markers, &union)?;
    no_conflicts(w)?;
    feed_never_skipped(w)
}

/// Invariants 1 and 2: each transaction applied at most once, exactly as its command says, each
/// from the stock the previous application left; never below zero; the final stock is that
/// history's.
fn applications_chain(
    w: &World,
    applied: &[Applied],
    markers: &Markers,
    commands: &Commands,
) -> Result<(), String> {
    // 1. Each transaction applied at most once, each exactly as its command says, chained.
    let mut seen = BTreeSet::new();
    let mut stock: BTreeMap<u64, i64> = BTreeMap::new();
    for a in applied {
        if !seen.insert(a.transaction.clone()) {
            return Err(format!("{} was applied twice", a.transaction));
        }
        let lines = commands
            .get(a.transaction.as_str())
            .ok_or_else(|| format!("{} is not a command", a.transaction))?;
        for (id, before) in &a.before {
            if *before != stock.get(id).copied() {
                return Err(format!(
                    "{}: product {id} read {before:?} but the previous application left {:?}",
                    a.transaction,
                    stock.get(id)
                ));
            }
        }
        if a.outcome.status == saldo_core::events::Outcome::Completed {
            for ((id, after), line) in a.after.iter().zip(lines.iter()) {
                let expect = match line.operation() {
                    Operation::Set(n) => n,
                    Operation::Change(d) => stock.get(id).copied().unwrap_or(0) + d,
                };
                if *after != expect || *id != line.id {
                    return Err(format!(
                        "{}: product {id} became {after}, expected {expect}",
                        a.transaction
                    ));
                }
                // 2. Never below zero.
                if *after < 0 {
                    return Err(format!(
                        "{}: product {id} went below zero ({after})",
                        a.transaction
                    ));
                }
                stock.insert(*id, *after);
            }
        } else if !a.after.is_empty() {
            return Err(format!("{}: a rejection changed stock", a.transaction));
        }
    }
    let final_stock: BTreeMap<u64, i64> =
        w.db.stock()
            .into_iter()
            .map(|(id, p)| (id, p.saldo))
            .collect();
    if final_stock != stock {
        return Err(format!(
            "final stock {final_stock:?} differs from the applied history {stock:?}"
        ));
    }
    if markers.len() != applied.len() {
        return Err(format!(
            "{} markers but {} applications",
            markers.len(),
            applied.len()
        ));
    }
    Ok(())
}

/// Invariant 3: every command a ledger holds was executed, and every published one executed or
/// dead-lettered by every region. Returns the transactions any ledger holds.
fn every_command_executed(
    w: &World,
    markers: &Markers,
    commands: &Commands,
) -> Result<BTreeSet<String>, String> {
    // 3. Every accepted command executed; every published one executed or undeliverable.
    let mut union = BTreeSet::new();
    for name in &w.names {
        union.extend(w.db.ledger(name).into_keys());
    }
    for tx in &union {
        if !commands.contains_key(tx.as_str()) {
            return Err(format!("{tx} is in a ledger but is no command"));
        }
        if !markers.contains_key(tx) {
            return Err(format!("{tx} was accepted but never executed"));
        }
    }
    for (i, (tx, _)) in w.commands.iter().enumerate() {
        if markers.contains_key(tx) {
            continue;
        }
        let dead = w.dead.get(&i).map(|d| d.len()).unwrap_or(0);
        if dead < w.names.len() {
            return Err(format!(
                "{tx} was published, never executed, and dead-lettered by only {dead} of {} regions",
                w.names.len()
            ));
        }
    }
    Ok(union)
}

/// Invariant 4: every ledger holds every transaction, decided as its marker says.
fn ledgers_complete(w: &World, markers: &Markers, union: &BTreeSet<String>) -> Result<(), String> {
    // 4. Every ledger complete and agreeing with the markers.
    for name in &w.names {
        let ledger = w.db.ledger(name);
        for tx in union {
            let Some(e) = ledger.get(tx) else {
                return Err(format!("{name}'s ledger lacks {tx}"));
            };
            let Some(o) = &e.outcome else {
                return Err(format!("{name}'s ledger still has {tx} pending"));
            };
            if !o.agrees_with(&markers[tx]) || e.state() == LedgerState::Pending {
                return Err(format!(
                    "{name}'s ledger says {o:?} for {tx}, the marker {:?}",
                    markers[tx]
                ));
            }
        }
    }
    Ok(())
}

/// No instance saw conflicting outcomes.
fn no_conflicts(w: &World) -> Result<(), String> {
    let conflicts: u64 = w
        .all_counters()
        .iter()
        .map(|c| c.get("conflicts").copied().unwrap_or(0))
        .sum();
    if conflicts > 0 {
        return Err(format!("instances saw {conflicts} conflicting outcomes"));
    }
    Ok(())
}

/// Invariant 5: the feed never skipped an entry at or below a reader's cursor.
fn feed_never_skipped(w: &World) -> Result<(), String> {
    // 5. The feed never skipped an entry below a cursor.
    let log = w.log.0.lock().unwrap();
    for reader in &w.names {
        for (peer_url, cursor) in w.db.cursors(reader) {
            let Some(peer) = w.names.iter().find(|n| url(n) == peer_url) else {
                continue;
            };
            let served = log.entries.get(&(reader.clone(), peer_url.clone()));
            for (tx, e) in w.db.ledger(peer) {
                if e.seq <= cursor && !served.is_some_and(|s| s.contains(&(tx.clone(), e.seq))) {
                    return Err(format!(
                        "{peer}'s feed skipped {tx} (seq {}) for {reader}, whose cursor is {cursor}",
                        e.seq
                    ));
                }
            }
        }
    }
    Ok(())
}
