//! One contract, two stores: every test here runs against `MemStore` and against `MongoStore`
//! over the wire (a real SecantusDB), so the in-memory store the simulation uses cannot drift
//! from the one production uses where the protocol depends on it (sequence allocation, the feed,
//! visibility of writes, contention).

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::Utc;
use saldo_core::events::{Outcome, ProductLine};
use saldo_store::test_util::{Secantus, spawn_secantus};
use saldo_store::*;

fn line(id: u64, change: i64) -> ProductLine {
    ProductLine {
        id,
        ean: 1000 + id,
        name: format!("Product {id}"),
        saldo: None,
        change: Some(change),
    }
}

fn cmd(tx: &str) -> NewCommand {
    NewCommand {
        transaction: tx.into(),
        command: Command {
            products: vec![line(1, -1)],
            traceparent: None,
            tracestate: None,
        },
        received_at: Utc::now(),
    }
}

fn outcome(node: &str) -> OutcomeRecord {
    OutcomeRecord {
        status: Outcome::Completed,
        node: node.into(),
        region: node.into(),
        reason: None,
        quantities: vec![],
        at: Utc::now(),
        takeover: false,
    }
}

/// Two writer instances of one region's ledger (what Flex Consumption runs) and one reader.
trait World {
    type S: Store;
    async fn writers(&self, node: &str) -> (Arc<Self::S>, Arc<Self::S>, Arc<Self::S>);
}

struct Mem(MemDb);
impl World for Mem {
    type S = MemStore;
    async fn writers(&self, node: &str) -> (Arc<MemStore>, Arc<MemStore>, Arc<MemStore>) {
        let s = || Arc::new(self.0.store(node));
        (s(), s(), s())
    }
}

struct Mongo(Secantus);
impl World for Mongo {
    type S = MongoStore;
    async fn writers(&self, node: &str) -> (Arc<MongoStore>, Arc<MongoStore>, Arc<MongoStore>) {
        let mut v = Vec::new();
        for _ in 0..3 {
            let s = MongoStore::connect(&self.0.uri(), "saldo", node)
                .await
                .unwrap();
            s.init().await.unwrap();
            v.push(Arc::new(s));
        }
        let c = v.pop().unwrap();
        let b = v.pop().unwrap();
        (v.pop().unwrap(), b, c)
    }
}

/// Reads the whole feed `limit` entries at a time, as a peer's catch-up does (cursor = the last
/// served entry's seq), and returns every transaction served.
async fn read_feed<S: Store>(s: &S, limit: usize) -> Vec<(u64, String)> {
    let mut cursor = 0;
    let mut served = Vec::new();
    for _ in 0..10_000 {
        let page = s.page(cursor, limit).await.unwrap();
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        served.extend(page.into_iter().map(|e| (e.seq, e.transaction)));
    }
    served
}

/// Two instances writing one ledger at the same time, commands and outcomes interleaved: every
/// sequence number is handed out once, and a reader paging one entry at a time is served every
/// transaction (none skipped by a tie at a page boundary).
async fn two_writers_never_tie<W: World>(w: &W) {
    let (a, b, reader) = w.writers("westeurope").await;
    const N: usize = 60;
    let write = |s: Arc<W::S>, name: &'static str| async move {
        for i in 0..N {
            let tx = format!("{name}-{i}");
            s.insert_commands(&[cmd(&tx)]).await.unwrap();
            if i % 3 == 0 {
                s.record_outcome(&tx, &outcome("westeurope"), true, Utc::now())
                    .await
                    .unwrap();
            }
        }
    };
    let (ra, rb) = tokio::join!(
        tokio::spawn(write(a.clone(), "a")),
        tokio::spawn(write(b.clone(), "b"))
    );
    ra.unwrap();
    rb.unwrap();
    let served = read_feed(&*reader, 1).await;
    let seqs: BTreeSet<u64> = served.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs.len(),
        served.len(),
        "a sequence number was handed out twice: {served:?}"
    );
    let txs: BTreeSet<&str> = served.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        txs.len(),
        2 * N,
        "the feed skipped entries: served {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mem_two_writers_never_tie() {
    two_writers_never_tie(&Mem(MemDb::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_two_writers_never_tie() {
    two_writers_never_tie(&Mongo(spawn_secantus())).await;
}

/// What the sequence design assumes of the database, checked over the wire: two transactions
/// that both write one document cannot both commit (the second gets WriteConflict 112, or its
/// commit fails as a transient transaction error), and a transaction reads from one snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secantus_gives_write_conflicts_and_snapshots() {
    use mongodb::bson::{Document, doc};
    use mongodb::options::{ReadConcern, WriteConcern};
    let db = spawn_secantus();
    let client = mongodb::Client::with_uri_str(db.uri()).await.unwrap();
    let coll = client.database("saldo").collection::<Document>("ledger_x");
    coll.insert_one(doc! {"_id": 0, "next": 0i64})
        .await
        .unwrap();
    let start = || async {
        let mut s = client.start_session().await.unwrap();
        s.start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::majority())
            .await
            .unwrap();
        s
    };
    let mut a = start().await;
    let mut b = start().await;
    // Both take a snapshot before either writes.
    for s in [&mut a, &mut b] {
        let d = coll
            .find_one(doc! {"_id": 0})
            .session(&mut *s)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.get_i64("next").unwrap(), 0);
    }
    coll.update_one(doc! {"_id": 0}, doc! {"$inc": {"next": 1i64}})
        .session(&mut a)
        .await
        .unwrap();
    let second = coll
        .update_one(doc! {"_id": 0}, doc! {"$inc": {"next": 1i64}})
        .session(&mut b)
        .await;
    let a_commit = a.commit_transaction().await;
    let b_failed = match second {
        Err(e) => {
            let code = match e.kind.as_ref() {
                mongodb::error::ErrorKind::Command(c) => Some(c.code),
                mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => {
                    Some(w.code)
                }
                _ => None,
            };
            assert!(
                code == Some(112) || e.contains_label("TransientTransactionError"),
                "the second writer must get a write conflict, got {e}"
            );
            true
        }
        Ok(_) => b.commit_transaction().await.is_err(),
    };
    assert!(a_commit.is_ok(), "the first writer commits: {a_commit:?}");
    assert!(
        b_failed,
        "two transactions writing one document both committed"
    );
    let d = coll.find_one(doc! {"_id": 0}).await.unwrap().unwrap();
    assert_eq!(d.get_i64("next").unwrap(), 1);

    // Snapshot: a transaction that read before another's commit keeps reading the old value.
    let mut r = start().await;
    let _ = coll
        .find_one(doc! {"_id": 0})
        .session(&mut r)
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 0}, doc! {"$inc": {"next": 1i64}})
        .await
        .unwrap();
    let seen = coll
        .find_one(doc! {"_id": 0})
        .session(&mut r)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen.get_i64("next").unwrap(),
        1,
        "a transaction reads one snapshot"
    );
    r.commit_transaction().await.unwrap();
}

/// A peer's heartbeats are ordered by (incarnation, timestamp) in the region's records, one
/// history for every instance: a late or repeated heartbeat is not newer, a restarted peer whose
/// clock went back is (its incarnation is higher), and incarnations only grow.
async fn peer_history_survives_a_clock_that_went_back<W: World>(w: &W) {
    let (a, b, _) = w.writers("westeurope").await;
    let i1 = a.next_incarnation().await.unwrap();
    let i2 = b.next_incarnation().await.unwrap();
    assert!(i2 > i1 && i1 > 0, "incarnations grow: {i1}, {i2}");
    // Whole milliseconds: what MongoDB keeps.
    let t = chrono::DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let beat = |incarnation: u64, at: chrono::DateTime<Utc>| PeerRecord {
        node: "northeurope".into(),
        region: "northeurope".into(),
        url: "http://127.0.0.2:1".into(),
        ready: true,
        started_at: at,
        last_heartbeat: Utc::now(),
        incarnation,
        beat_at: at,
        counters: Default::default(),
    };
    let s = chrono::Duration::seconds;
    assert!(a.record_peer(&beat(3, t)).await.unwrap());
    // Heard by another instance of the region: the same history.
    assert!(
        !b.record_peer(&beat(3, t)).await.unwrap(),
        "a redelivery is not newer"
    );
    assert!(
        !b.record_peer(&beat(3, t - s(1))).await.unwrap(),
        "a late beat is not newer"
    );
    assert!(b.record_peer(&beat(3, t + s(1))).await.unwrap());
    // Restarted with its clock an hour behind: a higher incarnation wins anyway.
    assert!(a.record_peer(&beat(4, t - s(3600))).await.unwrap());
    assert!(
        !a.record_peer(&beat(3, t + s(5))).await.unwrap(),
        "the old process is over"
    );
    let peers = b.peers().await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].stamp(), (4, beat(4, t - s(3600)).beat_at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mem_peer_history_survives_a_clock_that_went_back() {
    peer_history_survives_a_clock_that_went_back(&Mem(MemDb::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_peer_history_survives_a_clock_that_went_back() {
    peer_history_survives_a_clock_that_went_back(&Mongo(spawn_secantus())).await;
}
