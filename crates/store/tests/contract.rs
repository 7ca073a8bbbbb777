//! One contract, two stores: every check here is one generic function over a [`World`] of
//! stores, and [`contract!`] runs each against `MemStore` (`<check>::mem`) and against
//! `MongoStore` over the wire to a real SecantusDB (`<check>::mongo`), so the in-memory store
//! the simulation uses cannot drift from the one production uses where the protocol depends on
//! it: sequence allocation, the feed and its horizon, visibility of writes across instances,
//! contention and its exhaustion, and what a retry after an unknown result finds.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
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
    /// Another writer takes `node`'s ledger counter and keeps it (an open transaction that
    /// wrote it) until [`Hold::release`].
    async fn hold(&self, node: &str) -> Hold;
}

/// A ledger counter held by another writer, a live one: the database ends a transaction left
/// idle for its lifetime (5 s, as Cosmos DB; see `secantus.rs` for a writer that stopped), so
/// the Mongo hold keeps its transaction in use until released.
enum Hold {
    Mem(MemDb, String),
    Mongo {
        stop: tokio::sync::oneshot::Sender<()>,
        holder: tokio::task::JoinHandle<mongodb::ClientSession>,
    },
}

impl Hold {
    async fn release(self) {
        match self {
            Hold::Mem(db, node) => db.hold_ledger(&node, false),
            Hold::Mongo { stop, holder } => {
                stop.send(()).unwrap();
                holder.await.unwrap().abort_transaction().await.unwrap()
            }
        }
    }
}

struct Mem(MemDb);
impl World for Mem {
    type S = MemStore;
    async fn writers(&self, node: &str) -> (Arc<MemStore>, Arc<MemStore>, Arc<MemStore>) {
        let s = || Arc::new(self.0.store(node));
        (s(), s(), s())
    }
    async fn hold(&self, node: &str) -> Hold {
        self.0.hold_ledger(node, true);
        Hold::Mem(self.0.clone(), node.to_string())
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
    async fn hold(&self, node: &str) -> Hold {
        use mongodb::bson::{Document, doc};
        use mongodb::options::{ReadConcern, WriteConcern};
        let client = mongodb::Client::with_uri_str(self.0.uri()).await.unwrap();
        let coll = client
            .database("saldo")
            .collection::<Document>(&format!("ledger_{node}"));
        let mut s = client.start_session().await.unwrap();
        s.start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::majority())
            .await
            .unwrap();
        coll.update_one(doc! {"_id": 0}, doc! {"$set": {"held": true}})
            .upsert(true)
            .session(&mut s)
            .await
            .unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let holder = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return s,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                        coll.find_one(doc! {"_id": 0}).session(&mut s).await.unwrap();
                    }
                }
            }
        });
        Hold::Mongo { stop, holder }
    }
}

/// Runs each named check (an `async fn(&impl World)`) against both stores: `<check>::mem` and
/// `<check>::mongo`.
macro_rules! contract {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mem() {
                super::$check(&super::Mem(saldo_store::MemDb::new())).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mongo() {
                super::$check(&super::Mongo(saldo_store::test_util::spawn_secantus())).await;
            }
        }
    )*};
}

contract!(
    two_writers_never_tie,
    readers_during_writes_never_skip,
    peer_history_survives_a_clock_that_went_back,
    writes_are_visible_to_every_instance,
    a_retry_after_an_unknown_result_finds_the_first,
    a_held_ledger_is_contended_not_unavailable,
    limits_order_and_times_as_kept,
    racing_executors_apply_once_and_lose_no_update,
    outcomes_recorded_together_find_what_one_by_one_would,
    commands_and_their_outcomes_written_together_find_what_one_by_one_would,
);

/// Reads the whole feed `limit` entries at a time, as a peer's catch-up does (cursor = the last
/// served entry's seq), and returns every transaction served.
/// `op` until it is not a "try again" (contended or unavailable: what a webhook answers 503
/// and Event Grid redelivers), as a caller of the store would. A loaded machine turns some
/// writes racing another instance into exactly that; the feed's properties must hold anyway.
async fn until_taken<T, F, Fut>(mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    for _ in 0..20 {
        match op().await {
            Ok(v) => return v,
            Err(StoreError::Contended(_) | StoreError::Unavailable(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("still contended or unavailable after 20 tries")
}

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

/// The feed's horizon: while two instances write, a reader pages through the feed a few
/// entries at a time (its cursor the last entry served, as catch-up keeps it). Whatever the
/// interleaving, once the writers are done and the reader has read to the end, it has been
/// served every entry in its latest state: nothing was committed below a cursor already passed.
async fn readers_during_writes_never_skip<W: World>(w: &W) {
    let (a, b, reader) = w.writers("northeurope").await;
    const N: usize = 40;
    let write = |s: Arc<W::S>, name: &'static str| async move {
        for i in 0..N {
            let tx = format!("{name}-{i}");
            let cmds = [cmd(&tx), cmd(&format!("{tx}-x"))];
            until_taken(|| s.insert_commands(&cmds)).await;
            let o = outcome("northeurope");
            until_taken(|| s.record_outcome(&tx, &o, i % 2 == 0, Utc::now())).await;
        }
    };
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let read = {
        let reader = reader.clone();
        let done = done.clone();
        async move {
            let mut cursor = 0;
            let mut served = BTreeSet::new();
            let mut limit = 1;
            for _ in 0..100_000 {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = reader.page(cursor, limit).await.unwrap();
                limit = limit % 3 + 1;
                match page.last() {
                    Some(last) => {
                        assert!(last.seq > cursor, "the feed went backwards");
                        cursor = last.seq;
                        served.extend(page.into_iter().map(|e| (e.transaction, e.seq)));
                    }
                    // The writers were done before this read began, and it found nothing more.
                    None if finished => return served,
                    None => tokio::task::yield_now().await,
                }
            }
            panic!("the reader never reached the end of the feed");
        }
    };
    let r = tokio::spawn(read);
    let (ra, rb) = tokio::join!(
        tokio::spawn(write(a.clone(), "a")),
        tokio::spawn(write(b.clone(), "b"))
    );
    ra.unwrap();
    rb.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let served = r.await.unwrap();
    let latest = read_feed(&*reader, 500).await;
    assert_eq!(latest.len(), 4 * N);
    for (seq, tx) in latest {
        assert!(
            served.contains(&(tx.clone(), seq)),
            "{tx} at {seq} was never served to the reader: it was committed below a cursor already passed"
        );
    }
}

/// A write acknowledged through one instance's handle is seen at once through another's: the
/// ledger, the outbox, the feed, the peers, the cursors, the quarantine and the warehouse.
async fn writes_are_visible_to_every_instance<W: World>(w: &W) {
    let (a, b, _) = w.writers("swedencentral").await;
    a.insert_commands(&[cmd("v1"), cmd("v2")]).await.unwrap();
    let e = b.entry("v1").await.unwrap().expect("v1 visible to b");
    assert_eq!(e.state(), saldo_core::views::LedgerState::Pending);
    assert_eq!(b.pending(10).await.unwrap().len(), 2);
    assert_eq!(b.page(0, 10).await.unwrap().len(), 2);
    a.record_outcome("v1", &outcome("swedencentral"), false, Utc::now())
        .await
        .unwrap();
    let unpublished = b.unpublished(10).await.unwrap();
    assert_eq!(
        unpublished.len(),
        1,
        "the outbox is the region's, not one instance's"
    );
    assert_eq!(unpublished[0].transaction, "v1");
    b.mark_published(&["v1".to_string()]).await.unwrap();
    assert!(a.unpublished(10).await.unwrap().is_empty());
    assert_eq!(b.pending(10).await.unwrap().len(), 1);
    let recent = b.recent(1).await.unwrap();
    assert_eq!(recent[0].transaction, "v1", "the newest change first");

    a.set_cursor("http://127.0.0.3:7071", 42).await.unwrap();
    assert_eq!(b.cursor("http://127.0.0.3:7071").await.unwrap(), 42);
    assert_eq!(b.cursor("http://elsewhere").await.unwrap(), 0);

    let q = Quarantined {
        id: "q1".into(),
        event_id: Some("e1".into()),
        event_type: Some("recordUpdated".into()),
        data_version: Some("2.0".into()),
        reason: "another data version".into(),
        raw: "{}".into(),
        at_ms: 1,
    };
    a.quarantine(std::slice::from_ref(&q)).await.unwrap();
    assert_eq!(b.quarantined(10).await.unwrap(), vec![q]);

    let stock = ProductLine {
        saldo: Some(5),
        change: None,
        ..line(7, 0)
    };
    let ex = a
        .execute("stock-7", &[stock], "swedencentral", false, Utc::now())
        .await
        .unwrap();
    assert!(ex.fresh);
    assert_eq!(b.marker("stock-7").await.unwrap(), Some(ex.outcome));
    assert_eq!(b.product(7).await.unwrap().map(|p| p.saldo), Some(5));
    assert_eq!(b.products().await.unwrap().len(), 1);
}

/// A write whose reply was lost (a timeout, an unknown commit result, a crash after the
/// database took it) is retried; the retry finds what the first did and answers so: a
/// duplicate, the same outcome, the same marker without a second stock change, not newer.
async fn a_retry_after_an_unknown_result_finds_the_first<W: World>(w: &W) {
    let (a, b, _) = w.writers("francecentral").await;
    assert_eq!(
        a.insert_commands(&[cmd("r1"), cmd("r1")]).await.unwrap(),
        vec![Inserted::New, Inserted::Duplicate],
        "a transaction twice in one delivery: the first copy is the new one"
    );
    let seq = a.entry("r1").await.unwrap().unwrap().seq;
    assert_eq!(
        b.insert_commands(&[cmd("r2"), cmd("r1")]).await.unwrap(),
        vec![Inserted::New, Inserted::Duplicate]
    );
    assert_eq!(
        a.entry("r1").await.unwrap().unwrap().seq,
        seq,
        "a duplicate changes nothing, not even its place in the feed"
    );
    let o = outcome("francecentral");
    assert_eq!(
        a.record_outcome("r1", &o, true, Utc::now()).await.unwrap(),
        Recorded::New
    );
    let seq = a.entry("r1").await.unwrap().unwrap().seq;
    assert_eq!(
        b.record_outcome("r1", &o, true, Utc::now()).await.unwrap(),
        Recorded::Same
    );
    assert_eq!(a.entry("r1").await.unwrap().unwrap().seq, seq);
    let other = outcome("uksouth");
    assert_eq!(
        b.record_outcome("r1", &other, true, Utc::now())
            .await
            .unwrap(),
        Recorded::Conflict(a.entry("r1").await.unwrap().unwrap().outcome.unwrap()),
        "a different outcome never overwrites the known one"
    );
    assert_eq!(
        a.entry("r1").await.unwrap().unwrap().outcome.unwrap().node,
        "francecentral"
    );
    // An outcome heard before the command: an entry of its own; the command then is a duplicate.
    assert_eq!(
        a.record_outcome("r3", &o, true, Utc::now()).await.unwrap(),
        Recorded::New
    );
    let r3 = b.entry("r3").await.unwrap().unwrap();
    assert!(r3.command.is_none() && r3.outcome.is_some());
    assert_eq!(
        b.insert_commands(&[cmd("r3")]).await.unwrap(),
        vec![Inserted::Duplicate]
    );

    let stock = ProductLine {
        saldo: Some(3),
        change: None,
        ..line(1, 0)
    };
    a.execute("s1", &[stock], "francecentral", false, Utc::now())
        .await
        .unwrap();
    let first = a
        .execute("buy", &[line(1, -1)], "francecentral", false, Utc::now())
        .await
        .unwrap();
    assert!(first.fresh);
    let again = b
        .execute("buy", &[line(1, -1)], "uksouth", true, Utc::now())
        .await
        .unwrap();
    assert!(!again.fresh, "the marker is found");
    assert_eq!(again.outcome, first.outcome, "and its outcome adopted");
    assert_eq!(
        b.product(1).await.unwrap().unwrap().saldo,
        2,
        "stock changed once"
    );

    let t = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let beat = PeerRecord {
        node: "uksouth".into(),
        region: "uksouth".into(),
        url: "http://127.0.0.6:1".into(),
        ready: true,
        started_at: t,
        last_heartbeat: t,
        incarnation: 1,
        beat_at: t,
        counters: Default::default(),
    };
    assert!(a.record_peer(&beat).await.unwrap());
    assert!(!b.record_peer(&beat).await.unwrap(), "a retry is not newer");
}

/// Another writer holds the ledger's counter through every retry: each write that numbers
/// entries is `Contended` (the database is up, the document is hot), never `Unavailable`, and
/// writes nothing; reads go on. Once released, writing goes on, numbered after what was there.
async fn a_held_ledger_is_contended_not_unavailable<W: World>(w: &W) {
    let (a, b, _) = w.writers("uksouth").await;
    a.insert_commands(&[cmd("before")]).await.unwrap();
    let before = a.entry("before").await.unwrap().unwrap().seq;
    let hold = w.hold("uksouth").await;
    match a.insert_commands(&[cmd("during")]).await {
        Err(StoreError::Contended(_)) => {}
        other => panic!("a held counter is contention, got {other:?}"),
    }
    match b
        .record_outcome("before", &outcome("uksouth"), true, Utc::now())
        .await
    {
        Err(StoreError::Contended(_)) => {}
        other => panic!("a held counter is contention, got {other:?}"),
    }
    assert!(
        b.entry("during").await.unwrap().is_none(),
        "nothing written"
    );
    assert!(b.entry("before").await.unwrap().unwrap().outcome.is_none());
    assert_eq!(b.page(0, 10).await.unwrap().len(), 1, "reads go on");
    hold.release().await;
    a.insert_commands(&[cmd("after")]).await.unwrap();
    assert!(a.entry("after").await.unwrap().unwrap().seq > before);
}

/// Limits are clamped to 1..=MAX_PAGE, listings come in the order the worker relies on, and
/// times come back as kept (whole milliseconds).
async fn limits_order_and_times_as_kept<W: World>(w: &W) {
    let (a, b, _) = w.writers("westeurope").await;
    let t0 = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let at = |ms: i64| NewCommand {
        received_at: t0 + Duration::microseconds(ms * 1000 + 321),
        ..cmd("")
    };
    // Received out of order, in two batches by two instances.
    a.insert_commands(&[
        NewCommand {
            transaction: "late".into(),
            ..at(30)
        },
        NewCommand {
            transaction: "early".into(),
            ..at(10)
        },
    ])
    .await
    .unwrap();
    b.insert_commands(&[NewCommand {
        transaction: "middle".into(),
        ..at(20)
    }])
    .await
    .unwrap();
    let pending: Vec<String> = a
        .pending(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.transaction)
        .collect();
    assert_eq!(
        pending,
        ["early", "middle", "late"],
        "earliest received first"
    );
    let e = b.entry("early").await.unwrap().unwrap();
    assert_eq!(
        e.received_at.unwrap().timestamp_micros(),
        (t0 + Duration::milliseconds(10)).timestamp_millis() * 1000,
        "kept in whole milliseconds"
    );
    assert_eq!(a.page(0, 0).await.unwrap().len(), 1, "a limit of 0 is 1");
    assert_eq!(a.pending(0).await.unwrap().len(), 1);
    assert_eq!(a.recent(0).await.unwrap().len(), 1);
    let feed: Vec<String> = a
        .page(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.transaction)
        .collect();
    assert_eq!(
        feed,
        ["late", "early", "middle"],
        "the feed in commit order"
    );
    // Outcomes recorded (unpublished) in another order: the outbox comes in feed order.
    for tx in ["middle", "late", "early"] {
        b.record_outcome(tx, &outcome("westeurope"), false, Utc::now())
            .await
            .unwrap();
    }
    let outbox: Vec<String> = a
        .unpublished(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.transaction)
        .collect();
    assert_eq!(outbox, ["middle", "late", "early"]);
    let recent: Vec<String> = a
        .recent(2)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.transaction)
        .collect();
    assert_eq!(recent, ["early", "late"], "newest change first");
    let many: Vec<NewCommand> = (0..MAX_PAGE + 20)
        .map(|i| NewCommand {
            transaction: format!("m{i:04}"),
            ..cmd("")
        })
        .collect();
    a.insert_commands(&many).await.unwrap();
    assert_eq!(b.page(0, 10 * MAX_PAGE).await.unwrap().len(), MAX_PAGE);
    assert_eq!(b.pending(10 * MAX_PAGE).await.unwrap().len(), MAX_PAGE);
}

/// Executors racing on one transaction through different instances (and regions) apply it
/// once; executors of different transactions on one product lose no update.
async fn racing_executors_apply_once_and_lose_no_update<W: World>(w: &W) {
    let (a, b, c) = w.writers("westeurope").await;
    let stock = ProductLine {
        saldo: Some(100),
        change: None,
        ..line(1, 0)
    };
    a.execute("stock", &[stock], "westeurope", false, Utc::now())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for (i, s) in [a, b, c].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut fresh = Vec::new();
            for k in 0..10 {
                // The same transaction by all three, and one of each's own.
                for tx in [format!("same-{k}"), format!("own-{i}-{k}")] {
                    // Contention past the store's retries is the caller's to retry (a sweep
                    // does, later): here at once, a bounded number of times.
                    let mut tries = 0;
                    let ex = loop {
                        tries += 1;
                        match s
                            .execute(&tx, &[line(1, -1)], "westeurope", false, Utc::now())
                            .await
                        {
                            Err(StoreError::Contended(e)) if tries < 20 => {
                                eprintln!("contended, again: {e}")
                            }
                            other => break other.unwrap(),
                        }
                    };
                    if ex.fresh {
                        fresh.push(tx);
                    }
                }
            }
            fresh
        }));
    }
    let mut fresh = Vec::new();
    for t in tasks {
        fresh.extend(t.await.unwrap());
    }
    let unique: BTreeSet<&String> = fresh.iter().collect();
    assert_eq!(
        unique.len(),
        fresh.len(),
        "a transaction applied twice: {fresh:?}"
    );
    assert_eq!(fresh.len(), 10 + 30);
    let (_, _, r) = w.writers("westeurope").await;
    assert_eq!(
        r.product(1).await.unwrap().unwrap().saldo,
        100 - 40,
        "no lost update"
    );
}

/// Several outcomes in one call find what one call each would, in order: new for a pending
/// entry and for one never seen, the same for a known one, a conflict for a different known one
/// (which is kept), and a transaction twice in one batch is new once. What they write is
/// numbered after what was there, and visible to the other instances.
async fn outcomes_recorded_together_find_what_one_by_one_would<W: World>(w: &W) {
    let (a, b, c) = w.writers("francecentral").await;
    let now = Utc::now();
    a.insert_commands(&[cmd("p1"), cmd("p2"), cmd("k1"), cmd("k2")])
        .await
        .unwrap();
    a.record_outcome("k1", &outcome("x"), true, now)
        .await
        .unwrap();
    a.record_outcome("k2", &outcome("x"), true, now)
        .await
        .unwrap();
    let top = c
        .page(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .max()
        .unwrap();
    let item = |tx: &str, node: &str| OutcomeToRecord {
        transaction: tx.into(),
        outcome: outcome(node),
        published: true,
    };
    assert_eq!(b.record_outcomes(&[], now).await.unwrap(), vec![]);
    let found = b
        .record_outcomes(
            &[
                item("p1", "x"),
                item("u1", "x"),
                item("k1", "x"),
                item("k2", "y"),
                item("p1", "x"),
            ],
            now,
        )
        .await
        .unwrap();
    assert!(
        matches!(
            found.as_slice(),
            [
                Recorded::New,
                Recorded::New,
                Recorded::Same,
                Recorded::Conflict(known),
                Recorded::Same
            ] if known.node == "x"
        ),
        "{found:?}"
    );
    for tx in ["p1", "u1"] {
        let e = c.entry(tx).await.unwrap().unwrap();
        assert_eq!(e.outcome.unwrap().node, "x", "{tx}");
        assert!(e.seq > top, "{tx} numbered after what was there");
    }
    assert_eq!(
        c.entry("k2").await.unwrap().unwrap().outcome.unwrap().node,
        "x"
    );
    assert!(c.entry("p2").await.unwrap().unwrap().outcome.is_none());
    // Nothing new: nothing written, nothing renumbered.
    let before = c.page(0, 100).await.unwrap();
    let again = b
        .record_outcomes(&[item("k1", "x"), item("u1", "x")], now)
        .await
        .unwrap();
    assert_eq!(again, vec![Recorded::Same, Recorded::Same]);
    assert_eq!(c.page(0, 100).await.unwrap(), before);
}

/// An owner that executed before recording writes each command with its outcome in one call
/// (`write_entries`): a new one is inserted decided, with its command, and served by the feed
/// once, numbered after what was there; a pending one is a duplicate whose outcome is new; a
/// decided one is a duplicate with the same outcome, or a conflict (kept); commands without an
/// outcome stay pending, and an outcome without its command is recorded as `record_outcomes`
/// would. Every case in one call, and again on a second instance.
async fn commands_and_their_outcomes_written_together_find_what_one_by_one_would<W: World>(w: &W) {
    let (a, b, c) = w.writers("francecentral").await;
    let now = Utc::now();
    a.insert_commands(&[cmd("p1"), cmd("k1"), cmd("k2")])
        .await
        .unwrap();
    a.record_outcome("k1", &outcome("x"), true, now)
        .await
        .unwrap();
    a.record_outcome("k2", &outcome("x"), true, now)
        .await
        .unwrap();
    let top = read_feed(&*c, 100).await.iter().map(|e| e.0).max().unwrap();
    let item = |tx: &str, node: &str, published: bool| OutcomeToRecord {
        transaction: tx.into(),
        outcome: outcome(node),
        published,
    };
    let (inserted, recorded) = b
        .write_entries(
            &[
                cmd("n1"),
                cmd("p1"),
                cmd("plain"),
                cmd("k1"),
                cmd("k2"),
                cmd("n2"),
            ],
            &[
                item("n2", "b", true),
                item("o1", "x", true),
                item("n1", "b", false),
                item("p1", "b", true),
                item("k1", "x", true),
                item("k2", "y", true),
            ],
            now,
        )
        .await
        .unwrap();
    use Inserted::{Duplicate, New};
    assert_eq!(
        inserted,
        vec![New, Duplicate, New, Duplicate, Duplicate, New]
    );
    assert!(
        matches!(
            recorded.as_slice(),
            [
                Recorded::New,
                Recorded::New,
                Recorded::New,
                Recorded::New,
                Recorded::Same,
                Recorded::Conflict(known),
            ] if known.node == "x"
        ),
        "{recorded:?}"
    );
    for (tx, node, has_command) in [
        ("n1", "b", true),
        ("n2", "b", true),
        ("p1", "b", true),
        ("o1", "x", false),
    ] {
        let e = c.entry(tx).await.unwrap().unwrap();
        assert_eq!(e.outcome.as_ref().unwrap().node, node, "{tx}");
        assert_eq!(e.command.is_some(), has_command, "{tx}: {e:?}");
        assert!(e.seq > top, "{tx} numbered after what was there");
    }
    assert!(
        !c.entry("n1").await.unwrap().unwrap().published,
        "n1 is owed"
    );
    assert!(c.entry("n2").await.unwrap().unwrap().published);
    assert!(c.entry("plain").await.unwrap().unwrap().outcome.is_none());
    assert_eq!(
        c.entry("k2").await.unwrap().unwrap().outcome.unwrap().node,
        "x"
    );
    let served = read_feed(&*c, 2).await;
    for tx in ["n1", "n2", "plain", "o1"] {
        assert_eq!(
            served.iter().filter(|e| e.1 == tx).count(),
            1,
            "{tx} served once: {served:?}"
        );
    }
    // Nothing new: nothing written, nothing renumbered.
    let before = c.page(0, 100).await.unwrap();
    let (inserted, recorded) = a
        .write_entries(&[cmd("n1")], &[item("n1", "b", false)], now)
        .await
        .unwrap();
    assert_eq!(
        (inserted, recorded),
        (vec![Duplicate], vec![Recorded::Same])
    );
    assert_eq!(c.page(0, 100).await.unwrap(), before);
}
