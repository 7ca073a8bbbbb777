//! The [`Store`] operations over the in-memory database, with `MongoStore`'s semantics.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use saldo_core::events::ProductLine;
use saldo_core::stock::StockDecision;
use saldo_core::views::ProductView;

use super::{Applied, Inner, MemStore, Mutation, check_held, clamp, ms};
use crate::model::*;
use crate::{MAX_PRODUCTS, Quarantined, Result, Store, decide};

/// The entries of `node`'s ledger that `keep` selects, cloned, in transaction order (none for a
/// node that has no ledger yet); each read sorts them as its index would.
fn ledger_entries(db: &Inner, node: &str, keep: impl Fn(&LedgerEntry) -> bool) -> Vec<LedgerEntry> {
    db.ledgers
        .get(node)
        .map(|l| l.entries.values().filter(|e| keep(e)).cloned().collect())
        .unwrap_or_default()
}

impl Store for MemStore {
    async fn quarantine(&self, events: &[Quarantined]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.op("quarantine", |db, node| {
            let q = db.quarantine.entry(node.to_string()).or_default();
            for e in events {
                q.entry(e.id.clone()).or_insert_with(|| e.clone());
            }
            Ok(())
        })
        .await
    }

    async fn quarantined(&self, limit: usize) -> Result<Vec<Quarantined>> {
        self.op("quarantined", |db, node| {
            let mut all: Vec<Quarantined> = db
                .quarantine
                .get(node)
                .map(|q| q.values().cloned().collect())
                .unwrap_or_default();
            all.sort_by_key(|q| std::cmp::Reverse(q.at_ms));
            all.truncate(clamp(limit));
            Ok(all)
        })
        .await
    }

    fn node(&self) -> &str {
        &self.node
    }

    async fn init(&self) -> Result<()> {
        let local = self.local_seq.clone();
        self.op("init", |db, node| {
            let ledger = db.ledgers.entry(node.to_string()).or_default();
            // (Mutated: this handle numbers on from what the ledger held when it started.)
            local
                .lock()
                .expect("local sequence lock")
                .get_or_insert(ledger.seq);
            Ok(())
        })
        .await
    }

    fn db_ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    async fn insert_commands(&self, cmds: &[NewCommand]) -> Result<Vec<Inserted>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let local = self.local_seq.clone();
        self.op("insert_commands", |db, node| {
            check_held(db, node, "insert commands")?;
            let mutation = db.mutation;
            let ledger = db.ledgers.entry(node.to_string()).or_default();
            let mut out = Vec::with_capacity(cmds.len());
            for c in cmds {
                if ledger.entries.contains_key(&c.transaction) {
                    out.push(Inserted::Duplicate);
                    continue;
                }
                let seq = ledger.next_seq(mutation, &local);
                if mutation == Mutation::LoseCommands {
                    out.push(Inserted::New);
                    continue;
                }
                ledger.entries.insert(
                    c.transaction.clone(),
                    LedgerEntry {
                        transaction: c.transaction.clone(),
                        command: Some(c.command.clone()),
                        received_at: Some(ms(c.received_at)),
                        outcome: None,
                        published: true,
                        recorded_at: ms(c.received_at),
                        seq,
                    },
                );
                out.push(Inserted::New);
            }
            Ok(out)
        })
        .await
    }

    async fn record_outcome(
        &self,
        transaction: &str,
        outcome: &OutcomeRecord,
        published: bool,
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        let local = self.local_seq.clone();
        self.op("record_outcome", |db, node| {
            // `MongoStore` takes the number first, so a held counter fails even a repeat.
            check_held(db, node, "record outcome")?;
            let mutation = db.mutation;
            let ledger = db.ledgers.entry(node.to_string()).or_default();
            if let Some(known) = ledger
                .entries
                .get(transaction)
                .and_then(|e| e.outcome.as_ref())
            {
                return Ok(if known.agrees_with(outcome) {
                    Recorded::Same
                } else {
                    Recorded::Conflict(known.clone())
                });
            }
            let seq = ledger.next_seq(mutation, &local);
            let entry = ledger
                .entries
                .entry(transaction.to_string())
                .or_insert_with(|| LedgerEntry {
                    transaction: transaction.to_string(),
                    command: None,
                    received_at: None,
                    outcome: None,
                    published: true,
                    recorded_at: ms(now),
                    seq,
                });
            entry.outcome = Some(outcome.clone());
            entry.published = published;
            entry.seq = seq;
            Ok(Recorded::New)
        })
        .await
    }

    async fn mark_published(&self, transactions: &[String]) -> Result<()> {
        if transactions.is_empty() {
            return Ok(());
        }
        self.op("mark_published", |db, node| {
            let ledger = db.ledgers.entry(node.to_string()).or_default();
            for t in transactions {
                if let Some(e) = ledger.entries.get_mut(t) {
                    e.published = true;
                }
            }
            Ok(())
        })
        .await
    }

    async fn pending(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.op("pending", |db, node| {
            let mut v = ledger_entries(db, node, |e| e.outcome.is_none());
            v.sort_by(|a, b| {
                a.received_at
                    .cmp(&b.received_at)
                    .then(a.transaction.cmp(&b.transaction))
            });
            v.truncate(clamp(limit));
            Ok(v)
        })
        .await
    }

    async fn unpublished(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.op("unpublished", |db, node| {
            let mut v = ledger_entries(db, node, |e| !e.published);
            v.sort_by_key(|e| e.seq);
            v.truncate(clamp(limit));
            Ok(v)
        })
        .await
    }

    async fn entry(&self, transaction: &str) -> Result<Option<LedgerEntry>> {
        self.op("entry", |db, node| {
            Ok(db
                .ledgers
                .get(node)
                .and_then(|l| l.entries.get(transaction).cloned()))
        })
        .await
    }

    async fn page(&self, after: u64, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.op("page", |db, node| {
            let mut v = ledger_entries(db, node, |e| e.seq > after);
            // (Ties, possible only mutated, in transaction order, as an index would.)
            v.sort_by(|a, b| a.seq.cmp(&b.seq).then(a.transaction.cmp(&b.transaction)));
            v.truncate(clamp(limit));
            Ok(v)
        })
        .await
    }

    async fn recent(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.op("recent", |db, node| {
            let mut v = ledger_entries(db, node, |_| true);
            v.sort_by_key(|e| std::cmp::Reverse(e.seq));
            v.truncate(clamp(limit));
            Ok(v)
        })
        .await
    }

    async fn record_peer(&self, peer: &PeerRecord) -> Result<bool> {
        // Kept as `MongoStore` keeps it (whole milliseconds), and compared as kept.
        let peer = PeerRecord {
            started_at: ms(peer.started_at),
            last_heartbeat: ms(peer.last_heartbeat),
            beat_at: ms(peer.beat_at),
            ..peer.clone()
        };
        self.op("record_peer", |db, node| {
            let peers = db.peers.entry(node.to_string()).or_default();
            match peers.get(&peer.node) {
                Some(known) if known.stamp() >= peer.stamp() => Ok(false),
                _ => {
                    peers.insert(peer.node.clone(), peer.clone());
                    Ok(true)
                }
            }
        })
        .await
    }

    async fn next_incarnation(&self) -> Result<u64> {
        self.op("next_incarnation", |db, node| {
            let n = db.incarnations.entry(node.to_string()).or_default();
            *n += 1;
            Ok(*n)
        })
        .await
    }

    async fn peers(&self) -> Result<Vec<PeerRecord>> {
        self.op("peers", |db, node| {
            Ok(db
                .peers
                .get(node)
                .map(|p| p.values().cloned().collect())
                .unwrap_or_default())
        })
        .await
    }

    async fn cursor(&self, url: &str) -> Result<u64> {
        self.op("cursor", |db, node| {
            Ok(db
                .cursors
                .get(node)
                .and_then(|c| c.get(url).copied())
                .unwrap_or(0))
        })
        .await
    }

    async fn set_cursor(&self, url: &str, cursor: u64) -> Result<()> {
        self.op("set_cursor", |db, node| {
            db.cursors
                .entry(node.to_string())
                .or_default()
                .insert(url.to_string(), cursor);
            Ok(())
        })
        .await
    }

    async fn execute(
        &self,
        transaction: &str,
        lines: &[ProductLine],
        region: &str,
        takeover: bool,
        now: DateTime<Utc>,
    ) -> Result<Execution> {
        self.op("execute", |db, node| {
            if db.mutation != Mutation::SkipMarkerCheck
                && let Some(m) = db.markers.get(transaction)
            {
                return Ok(Execution {
                    outcome: m.clone(),
                    fresh: false,
                });
            }
            let current: BTreeMap<u64, ProductView> = lines
                .iter()
                .filter_map(|l| db.products.get(&l.id).map(|p| (p.id, p.clone())))
                .collect();
            let (decision, outcome) = decide(&current, lines, node, region, takeover, now);
            let before = lines
                .iter()
                .map(|l| (l.id, current.get(&l.id).map(|p| p.saldo)))
                .collect();
            let mut after = Vec::new();
            if let StockDecision::Apply { products, .. } = decision {
                for p in products {
                    // The invariant the whole fleet exists for; checked at the point of writing.
                    assert!(
                        p.saldo >= 0,
                        "stock below zero for product {} by {transaction}",
                        p.id
                    );
                    after.push((p.id, p.saldo));
                    db.products.insert(p.id, p);
                }
            }
            db.markers.insert(transaction.to_string(), outcome.clone());
            db.applied.push(Applied {
                transaction: transaction.to_string(),
                outcome: outcome.clone(),
                before,
                after,
            });
            Ok(Execution {
                outcome,
                fresh: true,
            })
        })
        .await
    }

    async fn marker(&self, transaction: &str) -> Result<Option<OutcomeRecord>> {
        self.op("marker", |db, _| Ok(db.markers.get(transaction).cloned()))
            .await
    }

    async fn products(&self) -> Result<Vec<ProductView>> {
        self.op("products", |db, _| {
            Ok(db.products.values().take(MAX_PRODUCTS).cloned().collect())
        })
        .await
    }

    async fn product(&self, id: u64) -> Result<Option<ProductView>> {
        self.op("product", |db, _| Ok(db.products.get(&id).cloned()))
            .await
    }
}
