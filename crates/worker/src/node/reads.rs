//! What a node serves about itself: its ledger feed and entries, the warehouse's products, and
//! its status.

use std::collections::BTreeSet;

use saldo_core::views::{
    LedgerEntryView, LedgerPage, NodeStatusView, OutcomeView, PeerView, ProductView,
};
use saldo_store::origin::{Origin, scope};
use saldo_store::{LedgerEntry, Store, StoreError};

use super::{Bus, Clock, Node, PeerClient};

impl<S: Store, C: Clock, B: Bus, P: PeerClient> Node<S, C, B, P> {
    /// One page of this node's ledger feed.
    pub async fn feed(&self, after: u64, limit: usize) -> Result<LedgerPage, StoreError> {
        // Peers read the feed to catch up: its cost is catch-up's.
        let entries = scope(
            Origin::CatchUp,
            self.store
                .page(after, limit.clamp(1, saldo_store::MAX_PAGE)),
        )
        .await?;
        let next = entries.last().map(|e| e.seq).unwrap_or(after);
        Ok(LedgerPage {
            entries: entries.iter().map(|e| e.view(&self.cfg.node)).collect(),
            next,
        })
    }

    /// The newest entries of this node's ledger, newest first (`next` is 0: not a feed page).
    pub async fn recent(&self, limit: usize) -> Result<LedgerPage, StoreError> {
        let entries = scope(
            Origin::Read,
            self.store.recent(limit.clamp(1, saldo_store::MAX_PAGE)),
        )
        .await?;
        Ok(LedgerPage {
            entries: entries.iter().map(|e| e.view(&self.cfg.node)).collect(),
            next: 0,
        })
    }

    pub async fn ledger_entry(&self, tx: &str) -> Result<Option<LedgerEntryView>, StoreError> {
        Ok(scope(Origin::Read, self.store.entry(tx))
            .await?
            .map(|e: LedgerEntry| e.view(&self.cfg.node)))
    }

    /// The warehouse's applied-marker of `tx`: its outcome, whoever executed it.
    pub async fn outcome(&self, tx: &str) -> Result<Option<OutcomeView>, StoreError> {
        Ok(scope(Origin::Read, self.store.marker(tx))
            .await?
            .map(|o| o.view(tx)))
    }

    pub async fn products(&self) -> Result<Vec<ProductView>, StoreError> {
        scope(Origin::Read, self.store.products()).await
    }

    pub async fn product(&self, id: u64) -> Result<Option<ProductView>, StoreError> {
        scope(Origin::Read, self.store.product(id)).await
    }

    /// This node's status; its peers as the region's records say (read again if stale).
    pub async fn status(&self) -> NodeStatusView {
        let now = self.clock.now();
        let live: BTreeSet<String> = self.live_peers(now).await.into_iter().collect();
        let peers = self
            .peers
            .lock()
            .expect("peers lock")
            .records
            .values()
            .map(|p| PeerView {
                node: p.node.clone(),
                region: p.region.clone(),
                url: p.url.clone(),
                last_heartbeat: p.last_heartbeat,
                live: live.contains(&p.node),
            })
            .collect();
        NodeStatusView {
            node: self.cfg.node.clone(),
            region: self.cfg.region.clone(),
            url: self.cfg.public_url.clone(),
            ready: self.is_ready(),
            started_at: self.started_at,
            counters: {
                // The breakdown by origin is for `/api/status` (`saldo bench`), not heartbeats.
                let mut c = self.counters_snapshot();
                c.extend(self.store.db_ops_by_origin());
                c
            },
            peers,
        }
    }
}
