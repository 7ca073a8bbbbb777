//! The feed tie, deterministically: two instances of one region record in the same millisecond
//! (one frozen clock), and a peer catching up one entry per page is served both. With the
//! sequence mutated to tie (each instance numbering from its own counter, as the per-process
//! clock sequence did) the same scenario loses one, so the test can tell the two apart.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use futures::executor::block_on;
use saldo_core::views::{LedgerPage, LedgerState, NodeStatusView};
use saldo_store::{LedgerEntry, MemDb, MemStore, Mutation};
use saldo_worker::testing::{NoPeers, NullBus};
use saldo_worker::{Config, ManualClock, Node, PeerClient, PeerError};
use serde_json::{Value, json};

type Instance = Node<MemStore, ManualClock, NullBus, NoPeers>;

/// The peer region as its HTTP instances answer, alternately, one entry per page.
struct OnePerPage(Vec<Arc<Instance>>, std::sync::atomic::AtomicUsize);
impl OnePerPage {
    fn next(&self) -> &Instance {
        let k = self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.0[k % self.0.len()]
    }
}
impl PeerClient for OnePerPage {
    async fn status(&self, _: &str) -> Result<NodeStatusView, PeerError> {
        Ok(self.next().status().await)
    }
    async fn ledger(&self, _: &str, after: u64, _: usize) -> Result<LedgerPage, PeerError> {
        self.next()
            .feed(after, 1)
            .await
            .map_err(|e| PeerError::caused_by(e.to_string(), e))
    }
}

fn config(node: &str) -> Config {
    Config {
        node: node.into(),
        region: node.into(),
        public_url: format!("sim://{node}"),
        peers: vec![],
        takeover: Duration::seconds(3),
        liveness: Duration::seconds(6),
        peers_cache: Duration::milliseconds(500),
        catch_up_every: 1,
    }
}

fn command(tx: &str) -> Value {
    json!([{
        "id": tx, "eventType": "recordUpdated", "subject": "shop/orders",
        "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "1.0",
        "data": {"transaction": tx, "products": [{"id": 1, "ean": 4000001, "name": "Orange", "saldo": 5}]}
    }])
}

/// Two instances of `westeurope` each take one command in the same millisecond; then
/// `northeurope` catches up from the region one entry per page. Returns northeurope's ledger.
fn two_instances_one_millisecond(mutation: Mutation) -> BTreeMap<String, LedgerEntry> {
    let db = MemDb::new();
    db.mutate(mutation);
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    let instance = || {
        Arc::new(Node::new(
            config("westeurope"),
            db.store("westeurope"),
            clock.clone(),
            NullBus,
            NoPeers,
        ))
    };
    let (a1, a2) = (instance(), instance());
    block_on(a1.start()).unwrap();
    block_on(a2.start()).unwrap();
    // The same instant on both machines: each records (and executes) its command.
    block_on(a1.handle_delivery(&command("tx-one"))).unwrap();
    block_on(a2.handle_delivery(&command("tx-two"))).unwrap();
    let b = Node::new(
        config("northeurope"),
        db.store("northeurope"),
        clock.clone(),
        NullBus,
        OnePerPage(vec![a1, a2], Default::default()),
    );
    block_on(b.start()).unwrap();
    // One entry per page, so every round ends on a page boundary: a few rounds read it all.
    for _ in 0..6 {
        block_on(b.catch_up_from("sim://westeurope")).unwrap();
    }
    db.ledger("northeurope")
}

#[test]
fn two_instances_recording_in_the_same_millisecond_are_both_caught_up() {
    let ledger = two_instances_one_millisecond(Mutation::None);
    for tx in ["tx-one", "tx-two"] {
        let e = ledger
            .get(tx)
            .unwrap_or_else(|| panic!("the feed skipped {tx}"));
        assert_eq!(
            e.state(),
            LedgerState::Completed,
            "{tx} caught up with its outcome"
        );
    }
}

#[test]
fn with_a_tying_sequence_the_same_scenario_skips_one() {
    let ledger = two_instances_one_millisecond(Mutation::TieSequence);
    assert_eq!(
        ledger.len(),
        1,
        "the tie at the page boundary hides one of the two: {:?}",
        ledger.keys().collect::<Vec<_>>()
    );
}
