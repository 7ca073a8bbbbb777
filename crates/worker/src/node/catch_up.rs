//! Catch-up: reconciling this node's ledger with each peer's ledger feed.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use saldo_core::events::{Outcome, RecordUpdated};
use saldo_core::views::{LedgerEntryView, LedgerState};
use saldo_store::origin::{Origin, scope};
use saldo_store::{
    Command, Inserted, LedgerEntry, NewCommand, OutcomeRecord, OutcomeToRecord, PeerRecord,
    Recorded, Store, StoreError,
};

use super::counters::inc;
use super::{Bus, CATCH_UP_PAGE, CATCH_UP_PAGES, Clock, MAX_PEERS, Node, NodeError, PeerClient};

impl<S: Store, C: Clock, B: Bus, P: PeerClient> Node<S, C, B, P> {
    /// Reconciles with every known peer: pages through its ledger feed from the last cursor and
    /// merges commands and outcomes into ours. Returns the number of repairs (entries our
    /// ledger learnt). A peer that cannot be reached is skipped (logged); a failure of our own
    /// database fails the round. (A paused peer that holds its connections cannot hold the
    /// round for long: the peer client bounds each request by the takeover deadline.)
    pub async fn catch_up(&self) -> Result<usize, NodeError> {
        let mut urls: BTreeSet<String> = self.cfg.peers.iter().cloned().collect();
        urls.extend(
            self.peers
                .lock()
                .expect("peers lock")
                .records
                .values()
                .map(|p| p.url.clone()),
        );
        urls.remove(&self.cfg.public_url);
        let mut repairs = 0;
        for url in urls.into_iter().filter(|u| !u.is_empty()).take(MAX_PEERS) {
            match scope(Origin::CatchUp, self.catch_up_from(&url)).await {
                Ok(n) => repairs += n,
                Err(NodeError::Store(StoreError::Contended(e))) => {
                    // Our ledger was busy through the retries: this peer's turn comes again.
                    inc(&self.counters.contended, 1);
                    tracing::info!(peer = %url, error = %e, "catch-up from a peer contended; next round");
                }
                Err(NodeError::Store(e)) => return Err(NodeError::Store(e)),
                Err(e) => tracing::info!(peer = %url, error = %e, "catch-up skipped a peer"),
            }
        }
        Ok(repairs)
    }

    /// Catch-up from one peer (see [`Node::catch_up`]).
    pub async fn catch_up_from(&self, url: &str) -> Result<usize, NodeError> {
        let status = self
            .peer_client
            .status(url)
            .await
            .map_err(NodeError::Peer)?;
        if status.node == self.cfg.node {
            return Ok(0);
        }
        let now = self.clock.now();
        // Known from now on (its URL and region), if it was not: a status answer carries no
        // place in the peer's heartbeat history, so it never overrides a heartbeat.
        self.remember_peer(PeerRecord {
            node: status.node.clone(),
            region: status.region.clone(),
            url: url.to_string(),
            ready: status.ready,
            started_at: status.started_at,
            last_heartbeat: now,
            incarnation: 0,
            beat_at: DateTime::<Utc>::UNIX_EPOCH,
            counters: status.counters.clone(),
        })
        .await?;
        let mut cursor = self.store.cursor(url).await?;
        let mut repairs = 0;
        for _ in 0..CATCH_UP_PAGES {
            let page = self
                .peer_client
                .ledger(url, cursor, CATCH_UP_PAGE)
                .await
                .map_err(NodeError::Peer)?;
            if page.entries.is_empty() {
                break;
            }
            if page.next <= cursor {
                tracing::warn!(peer = %url, cursor, next = page.next, "peer feed did not advance; stopping");
                break;
            }
            repairs += self.merge(&page.entries).await?;
            cursor = page.next;
            self.store.set_cursor(url, cursor).await?;
            if page.entries.len() < CATCH_UP_PAGE {
                break;
            }
        }
        inc(&self.counters.catch_up_repairs, repairs);
        Ok(repairs)
    }

    /// Merges a peer's ledger entries into ours. Returns how many taught us something.
    ///
    /// One read first for what our ledger already holds of them: most of a peer's feed is what
    /// we recorded too (every purchase passes through every ledger), and re-recording a known
    /// outcome costs a transaction that bumps the ledger's counter only to find it known. Only
    /// the commands we lack are inserted and only the outcomes we lack are recorded (in one
    /// store call); a known outcome that disagrees is still recorded, so that the conflict is
    /// logged and counted.
    pub async fn merge(&self, entries: &[LedgerEntryView]) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let mut repairs = 0;
        let ids: Vec<String> = entries.iter().map(|e| e.transaction.clone()).collect();
        let known: BTreeMap<String, LedgerEntry> = self
            .store
            .entries(&ids)
            .await?
            .into_iter()
            .map(|e| (e.transaction.clone(), e))
            .collect();
        let commands: Vec<NewCommand> = peer_commands(entries, now)
            .into_iter()
            .filter(|c| !known.contains_key(&c.transaction))
            .collect();
        let mut inserted = Vec::new();
        if !commands.is_empty() {
            inserted = self.store.insert_commands(&commands).await?;
            repairs += inserted.iter().filter(|r| **r == Inserted::New).count();
        }
        let mut items = Vec::new();
        for e in entries {
            let status = match e.state {
                LedgerState::Pending => continue,
                LedgerState::Completed => Outcome::Completed,
                LedgerState::Rejected => Outcome::Rejected,
            };
            let Some(node) = e.executed_by.clone() else {
                tracing::warn!(transaction = %e.transaction, "peer entry has an outcome but no executor; skipped");
                continue;
            };
            let outcome = OutcomeRecord {
                status,
                // The executor of our own outcome heard back from a peer: we lost our record
                // (crash between commit and record); owe the fleet its publication again.
                node: node.clone(),
                region: e.executed_region.clone().unwrap_or_default(),
                reason: e.reason.clone(),
                quantities: e.quantities.clone(),
                at: e.recorded_at,
                takeover: e.takeover,
            };
            if known
                .get(&e.transaction)
                .and_then(|k| k.outcome.as_ref())
                .is_some_and(|k| k.agrees_with(&outcome))
            {
                continue;
            }
            let published = node != self.cfg.node;
            items.push(OutcomeToRecord {
                transaction: e.transaction.clone(),
                outcome,
                published,
            });
        }
        // The page's outcomes we lack, in one store call.
        for (item, found) in items.iter().zip(self.record_all(&items, now).await?) {
            match found {
                Recorded::New => repairs += 1,
                Recorded::Same => {}
                Recorded::Conflict(known) => {
                    self.conflicting(&item.transaction, &known, &item.outcome)
                }
            }
        }
        // Whoever inserts a command executes what it owns of it: a delivery that comes after
        // us finds a duplicate and leaves it alone, so the ones we own would otherwise wait
        // for a sweep's turn (half a takeover deadline). Catch-up beats a late delivery under
        // load, and is the only way in for a region whose deliveries are held back.
        let new: Vec<&NewCommand> = commands
            .iter()
            .zip(&inserted)
            .filter(|(_, r)| **r == Inserted::New)
            .map(|(c, _)| c)
            .collect();
        self.execute_inline(new, &BTreeSet::new(), now).await;
        Ok(repairs)
    }
}

/// The pending commands among a peer's entries, validated again (a peer's bug must not poison
/// our ledger); an invalid one is logged and skipped.
fn peer_commands(entries: &[LedgerEntryView], now: DateTime<Utc>) -> Vec<NewCommand> {
    let mut commands = Vec::new();
    for e in entries.iter().filter(|e| e.state == LedgerState::Pending) {
        if let Some(products) = &e.products {
            // A peer validated it already; check again so a peer's bug cannot poison us.
            let cmd = RecordUpdated {
                transaction: None,
                products: products.clone(),
                traceparent: None,
                tracestate: None,
            };
            if let Err(err) = cmd.validate(&e.transaction) {
                tracing::warn!(transaction = %e.transaction, error = %err, "peer sent an invalid command; skipped");
            } else {
                commands.push(NewCommand {
                    transaction: e.transaction.clone(),
                    command: Command {
                        products: products.clone(),
                        traceparent: e.traceparent.clone(),
                        tracestate: None,
                    },
                    received_at: now,
                });
            }
        }
    }
    commands
}
