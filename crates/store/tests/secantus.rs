//! The MongoDB store against a real SecantusDB process.

use chrono::Utc;
use saldo_core::events::{Outcome, ProductLine, Quantity};
use saldo_store::test_util::{Secantus, spawn_secantus};
use saldo_store::*;

fn line(id: u64, saldo: Option<i64>, change: Option<i64>) -> ProductLine {
    ProductLine {
        id,
        ean: 1000 + id,
        name: format!("Product {id}"),
        saldo,
        change,
    }
}

fn cmd(tx: &str, lines: Vec<ProductLine>) -> NewCommand {
    NewCommand {
        transaction: tx.into(),
        command: Command {
            products: lines,
            traceparent: None,
            tracestate: None,
        },
        received_at: Utc::now(),
    }
}

async fn store(db: &Secantus, node: &str) -> MongoStore {
    let s = MongoStore::connect(&db.uri(), "saldo", node).await.unwrap();
    s.init().await.unwrap();
    s
}

async fn stock_up(s: &MongoStore, id: u64, n: i64) {
    let e = s
        .execute(
            &format!("stock-{id}-{n}"),
            &[line(id, Some(n), None)],
            "r",
            false,
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(e.outcome.status, Outcome::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_dedupes_feeds_and_records_outcomes() {
    let db = spawn_secantus();
    let s = store(&db, "westeurope").await;
    let got = s
        .insert_commands(&[
            cmd("a", vec![line(1, None, Some(-1))]),
            cmd("b", vec![line(1, Some(3), None)]),
        ])
        .await
        .unwrap();
    assert_eq!(got, vec![Inserted::New, Inserted::New]);
    // A redelivered batch with one new and two known transactions.
    let got = s
        .insert_commands(&[
            cmd("b", vec![]),
            cmd("c", vec![line(2, Some(1), None)]),
            cmd("a", vec![]),
        ])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![Inserted::Duplicate, Inserted::New, Inserted::Duplicate]
    );
    // The duplicate did not overwrite the command.
    let a = s.entry("a").await.unwrap().unwrap();
    assert_eq!(a.command.unwrap().products, vec![line(1, None, Some(-1))]);
    assert_eq!(s.pending(10).await.unwrap().len(), 3);

    // Feed: in order, paged, and a changed entry comes back with a new position.
    let page = s.page(0, 2).await.unwrap();
    assert_eq!(
        page.iter()
            .map(|e| e.transaction.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let rest = s.page(page[1].seq, 10).await.unwrap();
    assert_eq!(
        rest.iter()
            .map(|e| e.transaction.as_str())
            .collect::<Vec<_>>(),
        ["c"]
    );
    let cursor = rest[0].seq;
    assert!(s.page(cursor, 10).await.unwrap().is_empty());

    let outcome = OutcomeRecord {
        status: Outcome::Completed,
        node: "northeurope".into(),
        region: "northeurope".into(),
        reason: None,
        quantities: vec![Quantity { id: 1, saldo: 4 }],
        at: Utc::now(),
        takeover: false,
    };
    assert_eq!(
        s.record_outcome("a", &outcome, true, Utc::now())
            .await
            .unwrap(),
        Recorded::New
    );
    assert_eq!(
        s.record_outcome("a", &outcome, true, Utc::now())
            .await
            .unwrap(),
        Recorded::Same
    );
    let other = OutcomeRecord {
        node: "swedencentral".into(),
        ..outcome.clone()
    };
    assert_eq!(
        s.record_outcome("a", &other, true, Utc::now())
            .await
            .unwrap(),
        Recorded::Conflict(outcome.clone())
    );
    // An outcome for a transaction whose command never arrived here.
    assert_eq!(
        s.record_outcome("z", &outcome, false, Utc::now())
            .await
            .unwrap(),
        Recorded::New
    );
    let changed = s.page(cursor, 10).await.unwrap();
    assert_eq!(
        changed
            .iter()
            .map(|e| e.transaction.as_str())
            .collect::<Vec<_>>(),
        ["a", "z"]
    );
    assert_eq!(s.pending(10).await.unwrap().len(), 2);
    assert_eq!(
        s.unpublished(10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.transaction.clone())
            .collect::<Vec<_>>(),
        ["z"]
    );
    s.mark_published(&["z".into()]).await.unwrap();
    assert!(s.unpublished(10).await.unwrap().is_empty());

    // A restarted process continues the sequence instead of reusing numbers.
    let again = store(&db, "westeurope").await;
    again
        .insert_commands(&[cmd("d", vec![line(1, None, Some(-1))])])
        .await
        .unwrap();
    let d = again.entry("d").await.unwrap().unwrap();
    assert!(d.seq > changed.last().unwrap().seq);

    // The feed serves what it sees at once: no lag, whatever the clocks.
    assert_eq!(again.page(d.seq - 1, 10).await.unwrap()[0].transaction, "d");

    // Peers and cursors.
    let peer = PeerRecord {
        node: "northeurope".into(),
        region: "northeurope".into(),
        url: "http://127.0.0.1:1".into(),
        ready: true,
        started_at: Utc::now(),
        last_heartbeat: Utc::now(),
        incarnation: 1,
        beat_at: Utc::now(),
        counters: [("received".to_string(), 3u64)].into(),
    };
    assert!(s.record_peer(&peer).await.unwrap());
    assert!(
        !s.record_peer(&peer).await.unwrap(),
        "the same heartbeat again is not newer"
    );
    let peers = s.peers().await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].counters["received"], 3);
    assert_eq!(s.cursor(&peer.url).await.unwrap(), 0);
    s.set_cursor(&peer.url, 17).await.unwrap();
    assert_eq!(s.cursor(&peer.url).await.unwrap(), 17);
    assert!(s.db_ops() > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn execution_is_all_or_nothing_and_rejects_below_zero() {
    let db = spawn_secantus();
    let s = store(&db, "westeurope").await;
    stock_up(&s, 1, 5).await;
    stock_up(&s, 2, 1).await;
    // Multi-line: the second line cannot be satisfied, so neither changes.
    let e = s
        .execute(
            "t1",
            &[line(1, None, Some(-2)), line(2, None, Some(-2))],
            "westeurope",
            false,
            Utc::now(),
        )
        .await
        .unwrap();
    assert!(e.fresh);
    assert_eq!(e.outcome.status, Outcome::Rejected);
    assert_eq!(
        e.outcome.reason.as_deref(),
        Some("out of stock: Product 2 (id 2) has 1, needs 2")
    );
    assert_eq!(s.product(1).await.unwrap().unwrap().saldo, 5);
    assert_eq!(s.product(2).await.unwrap().unwrap().saldo, 1);
    // Executing it again adopts the recorded rejection; nothing changes.
    let again = s
        .execute(
            "t1",
            &[line(1, None, Some(-2))],
            "westeurope",
            false,
            Utc::now(),
        )
        .await
        .unwrap();
    assert!(!again.fresh);
    assert_eq!(again.outcome, e.outcome);
    // Both lines together.
    let ok = s
        .execute(
            "t2",
            &[line(1, None, Some(-2)), line(2, None, Some(-1))],
            "westeurope",
            false,
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(ok.outcome.status, Outcome::Completed);
    assert_eq!(
        ok.outcome.quantities,
        vec![Quantity { id: 1, saldo: 3 }, Quantity { id: 2, saldo: 0 }]
    );
    let unknown = s
        .execute(
            "t3",
            &[line(42, None, Some(-1))],
            "westeurope",
            false,
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(
        unknown.outcome.reason.as_deref(),
        Some("unknown product 42")
    );
    let products = s.products().await.unwrap();
    assert_eq!(
        products.iter().map(|p| (p.id, p.saldo)).collect::<Vec<_>>(),
        [(1, 3), (2, 0)]
    );
    assert_eq!(s.marker("t2").await.unwrap().unwrap(), ok.outcome);
    assert!(s.product(42).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_executors_change_stock_once() {
    let db = spawn_secantus();
    let nodes = ["westeurope", "northeurope", "swedencentral"];
    let mut stores = Vec::new();
    for n in nodes {
        stores.push(std::sync::Arc::new(store(&db, n).await));
    }
    stock_up(&stores[0], 7, 100).await;
    // The same transaction executed by three nodes at once, ten times over.
    for round in 0..10 {
        let tx = format!("race-{round}");
        let handles: Vec<_> = stores
            .iter()
            .map(|s| {
                let s = s.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    s.execute(&tx, &[line(7, None, Some(-3))], "r", false, Utc::now())
                        .await
                })
            })
            .collect();
        let mut fresh = 0;
        let mut outcomes = Vec::new();
        for h in handles {
            let e = h.await.unwrap().unwrap();
            fresh += e.fresh as usize;
            outcomes.push(e.outcome);
        }
        assert_eq!(fresh, 1, "exactly one executor commits {tx}");
        assert!(
            outcomes.iter().all(|o| o == &outcomes[0]),
            "all adopt the winner's outcome"
        );
    }
    assert_eq!(stores[0].product(7).await.unwrap().unwrap().saldo, 100 - 30);

    // Different transactions racing for the last items: exactly as many win as there is stock.
    stock_up(&stores[0], 8, 2).await;
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let s = stores[i % 3].clone();
            tokio::spawn(async move {
                s.execute(
                    &format!("buy-{i}"),
                    &[line(8, None, Some(-1))],
                    "r",
                    false,
                    Utc::now(),
                )
                .await
            })
        })
        .collect();
    let mut completed = 0;
    for h in handles {
        let e = h.await.unwrap().unwrap();
        completed += (e.outcome.status == Outcome::Completed) as usize;
    }
    assert_eq!(completed, 2);
    assert_eq!(stores[0].product(8).await.unwrap().unwrap().saldo, 0);
}

/// One instance's concurrent executions share warehouse transactions (group commit) and
/// each still gets its own answer: every purchase of the hot product is decided on the stock
/// the ones before it left, exactly as many win as there is stock, the same transaction asked
/// twice at once commits once, and the stock ends exact. One by one they conflicted on the
/// product and backed off; now the burst costs fewer transactions than executions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instances_concurrent_executions_share_transactions_and_stay_exact() {
    let db = spawn_secantus();
    let s = std::sync::Arc::new(store(&db, "westeurope").await);
    stock_up(&s, 9, 10).await;
    let commits_before = s.db_ops_by_origin().get("dbOps.other.txnEnd").copied();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let s = s.clone();
        // Buys 9-1 and 9-2 twice each: the second asker of each adopts.
        let tx = if i < 4 {
            format!("buy-{}", i % 2 + 1)
        } else {
            format!("buy-{i}")
        };
        tasks.spawn(async move {
            let e = s
                .execute(&tx, &[line(9, None, Some(-1))], "r", false, Utc::now())
                .await
                .unwrap();
            (tx, e)
        });
    }
    let mut by_tx: std::collections::BTreeMap<String, Vec<Execution>> = Default::default();
    while let Some(r) = tasks.join_next().await {
        let (tx, e) = r.unwrap();
        by_tx.entry(tx).or_default().push(e);
    }
    assert_eq!(by_tx.len(), 14, "14 transactions");
    let mut completed = 0;
    for (tx, es) in &by_tx {
        assert_eq!(
            es.iter().filter(|e| e.fresh).count(),
            1,
            "{tx} committed once: {es:?}"
        );
        assert!(
            es.iter().all(|e| e.outcome == es[0].outcome),
            "{tx}: one outcome"
        );
        completed += (es[0].outcome.status == Outcome::Completed) as usize;
    }
    assert_eq!(completed, 10, "exactly as many win as there was stock");
    assert_eq!(s.product(9).await.unwrap().unwrap().saldo, 0);
    let commits = s.db_ops_by_origin()["dbOps.other.txnEnd"] - commits_before.unwrap_or(0);
    assert!(
        commits < 14,
        "{commits} transactions for 14 executions: no group commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_unavailable() {
    let mut db = spawn_secantus();
    let s = store(&db, "westeurope").await;
    db.kill();
    let err = s
        .insert_commands(&[cmd("x", vec![line(1, Some(1), None)])])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    let err = s.products().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
}

/// One process's ledger writes never conflict with each other, and they share transactions:
/// a burst of concurrent deliveries (as Event Grid pushes them at one instance) goes through the
/// instance's group commit, so it costs three round trips per transaction (counter, bulk write,
/// commit) with no WriteConflict retries, and fewer transactions than deliveries. Unordered,
/// each write bumped the one counter document and they conflicted and backed off (under load,
/// 503s and minutes of delay); one transaction per write costs 3 round trips per delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_process_ledger_writes_do_not_conflict_with_each_other() {
    let db = spawn_secantus();
    let s = std::sync::Arc::new(store(&db, "westeurope").await);
    const N: usize = 24;
    let before = s.db_ops();
    let commits_before = s.db_ops_by_origin().get("dbOps.other.txnEnd").copied();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let s = s.clone();
        tasks.spawn(async move {
            s.insert_commands(&[cmd(&format!("burst-{i}"), vec![line(1, None, Some(-1))])])
                .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap().unwrap(), vec![Inserted::New]);
    }
    let commits = s.db_ops_by_origin()["dbOps.other.txnEnd"] - commits_before.unwrap_or(0);
    assert_eq!(
        s.db_ops() - before,
        3 * commits,
        "ledger writes retried on conflicts"
    );
    assert!(
        commits < N as u64,
        "{commits} transactions for {N} deliveries: no group commit"
    );
    assert_eq!(s.page(0, 100).await.unwrap().len(), N);
}

fn done(node: &str, status: Outcome) -> OutcomeRecord {
    OutcomeRecord {
        status,
        node: node.into(),
        region: node.into(),
        reason: None,
        quantities: vec![],
        at: Utc::now(),
        takeover: false,
    }
}

fn to_record(transaction: &str, outcome: OutcomeRecord) -> OutcomeToRecord {
    OutcomeToRecord {
        transaction: transaction.into(),
        outcome,
        published: true,
    }
}

/// Concurrent ledger writes of one instance, of every kind, go through its group commit: each
/// caller gets its own answers (new, duplicate, same, conflict) although they share
/// transactions, the feed numbers every change once, and a conflicting outcome never replaces
/// the known one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ledger_writes_share_transactions_and_keep_every_answer() {
    let db = spawn_secantus();
    let s = std::sync::Arc::new(store(&db, "westeurope").await);
    // Known before: "d0" decided by x; "p0" pending.
    s.insert_commands(&[cmd("p0", vec![line(1, None, Some(-1))])])
        .await
        .unwrap();
    s.record_outcome("d0", &done("x", Outcome::Completed), true, Utc::now())
        .await
        .unwrap();
    let commits_before = s.db_ops_by_origin().get("dbOps.other.txnEnd").copied();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let s = s.clone();
        tasks.spawn(async move {
            match i % 4 {
                0 => {
                    let r = s
                        .insert_commands(&[cmd(&format!("c{i}"), vec![line(1, None, Some(-1))])])
                        .await
                        .unwrap();
                    assert_eq!(r, vec![Inserted::New]);
                }
                1 => {
                    let r = s
                        .insert_commands(&[cmd("p0", vec![line(1, None, Some(-1))])])
                        .await
                        .unwrap();
                    assert_eq!(r, vec![Inserted::Duplicate]);
                }
                2 => {
                    let items = [
                        to_record(&format!("o{i}"), done("y", Outcome::Completed)),
                        to_record("d0", done("x", Outcome::Completed)),
                    ];
                    let r = s.record_outcomes(&items, Utc::now()).await.unwrap();
                    assert_eq!(r, vec![Recorded::New, Recorded::Same]);
                }
                _ => {
                    let r = s
                        .record_outcome("d0", &done("z", Outcome::Rejected), true, Utc::now())
                        .await
                        .unwrap();
                    assert!(
                        matches!(&r, Recorded::Conflict(k) if k.node == "x"),
                        "{r:?}"
                    );
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // Every change once in the feed, numbered uniquely.
    let feed = s.page(0, MAX_PAGE).await.unwrap();
    let mut seqs: Vec<u64> = feed.iter().map(|e| e.seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), feed.len());
    let txs: std::collections::BTreeSet<&str> =
        feed.iter().map(|e| e.transaction.as_str()).collect();
    assert_eq!(txs.len(), 2 + 6 + 6, "{txs:?}");
    assert_eq!(
        s.entry("d0").await.unwrap().unwrap().outcome.unwrap().node,
        "x"
    );
    assert!(s.entry("p0").await.unwrap().unwrap().outcome.is_none());
    let commits = s.db_ops_by_origin()["dbOps.other.txnEnd"] - commits_before.unwrap_or(0);
    assert!(
        commits < 24,
        "{commits} transactions for 24 calls: no group commit"
    );
}

/// A corrupt stored value is never read as something plausible: a timestamp out of range is
/// refused (not 1970), and a catch-up cursor that is no cursor restarts that peer's feed from
/// the start (safe: recording what we hold is a no-op), logged, instead of silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_stored_values_are_refused_or_healed_never_misread() {
    use mongodb::bson::{Document, doc};
    let db = spawn_secantus();
    let s = store(&db, "westeurope").await;
    let raw = mongodb::Client::with_uri_str(db.uri())
        .await
        .unwrap()
        .database("saldo");
    let peers = raw.collection::<Document>("peers_westeurope");
    peers
        .insert_one(doc! {"_id": "cursor:http://peer-a", "cursor": "seven"})
        .await
        .unwrap();
    peers
        .insert_one(doc! {"_id": "cursor:http://peer-b", "cursor": -4_i64})
        .await
        .unwrap();
    assert_eq!(s.cursor("http://peer-a").await.unwrap(), 0);
    assert_eq!(s.cursor("http://peer-b").await.unwrap(), 0);
    s.set_cursor("http://peer-a", 12).await.unwrap();
    assert_eq!(
        s.cursor("http://peer-a").await.unwrap(),
        12,
        "the next round heals it"
    );

    s.insert_commands(&[cmd("t-1", vec![line(1, None, Some(-1))])])
        .await
        .unwrap();
    raw.collection::<Document>("ledger_westeurope")
        .update_one(
            doc! {"_id": "t-1"},
            doc! {"$set": {"recorded_at_ms": i64::MAX}},
        )
        .await
        .unwrap();
    let e = s.entry("t-1").await.unwrap_err();
    assert!(
        matches!(e, StoreError::Failed(_)) && e.to_string().contains("out of range"),
        "{e}"
    );
}

/// A writer that stops half-way through a ledger transaction (its instance SIGSTOPped or
/// SIGKILLed after bumping the ledger's counter) holds the counter until the database ends
/// that transaction. Cosmos DB ends a transaction after 5 s; the stand-in is started with the
/// same limit, and a writer's retries outlast it, so the region's other writers get through
/// instead of giving up ("still conflicting") and leaving their work to a later redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_stopped_mid_transaction_does_not_block_the_ledger_for_long() {
    use mongodb::bson::{Document, doc};
    let db = spawn_secantus();
    let s = store(&db, "westeurope").await;
    s.insert_commands(&[cmd("held", vec![line(1, None, Some(-1))])])
        .await
        .unwrap();
    // Another instance of the region: bumps the counter inside a transaction, then stops.
    let stalled = mongodb::Client::with_uri_str(db.uri()).await.unwrap();
    let mut session = stalled.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    stalled
        .database("saldo")
        .collection::<Document>("ledger_westeurope")
        .update_one(doc! {"_id": 0}, doc! {"$inc": {"next": 1_i64}})
        .session(&mut session)
        .await
        .unwrap();
    // Never committed nor aborted: a stopped process sends nothing more (dropping the session
    // would abort the transaction).
    std::mem::forget(session);
    let outcome = OutcomeRecord {
        status: Outcome::Completed,
        node: "westeurope".into(),
        region: "westeurope".into(),
        reason: None,
        quantities: vec![],
        at: Utc::now(),
        takeover: false,
    };
    let recorded = s.record_outcome("held", &outcome, false, Utc::now()).await;
    assert_eq!(
        recorded.unwrap(),
        Recorded::New,
        "the stalled writer blocked the ledger past the writer's retries"
    );
    assert_eq!(s.unpublished(10).await.unwrap().len(), 1);
}

/// Every round trip is counted under the origin of the work that made it, with its kind, and
/// the breakdown adds up to the total (`saldo bench` prints it per purchase).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_are_counted_by_origin_and_kind() {
    use saldo_store::origin::{Origin, scope};
    let db = spawn_secantus();
    let s = store(&db, "westeurope").await;
    let before = s.db_ops();
    let start = s.db_ops_by_origin();
    scope(
        Origin::Command,
        s.insert_commands(&[cmd("o-1", vec![line(1, None, Some(-1))])]),
    )
    .await
    .unwrap();
    scope(Origin::Read, s.entry("o-1")).await.unwrap();
    let after = s.db_ops_by_origin();
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - start.get(k).copied().unwrap_or(0);
    // The counter bump and the insert, then the commit.
    assert_eq!(delta("dbOps.command.write"), 2, "{after:?}");
    assert_eq!(delta("dbOps.command.txnEnd"), 1, "{after:?}");
    assert_eq!(
        delta("dbDocs.command"),
        2,
        "the counter and the entry: {after:?}"
    );
    assert_eq!(delta("dbOps.read.pointRead"), 1, "{after:?}");
    let by_origin: u64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("dbOps."))
        .map(|(k, v)| v - start.get(k).copied().unwrap_or(0))
        .sum();
    assert_eq!(
        by_origin,
        s.db_ops() - before,
        "the breakdown adds up to the total"
    );
}

/// An execution is one read, ONE bulk write and a commit, however many products it touches:
/// a purchase of two products, and a restock that creates one, each cost 3 round trips (it was
/// one write per product plus one for the markers: 5 and 4). What they wrote is exact, and a
/// second execution adopts the marker (a read and an abort).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_is_one_bulk_write_whatever_it_touches() {
    let db = spawn_secantus();
    let s = store(&db, "westeurope").await;
    stock_up(&s, 1, 5).await;
    stock_up(&s, 2, 5).await;
    let ops = |s: &MongoStore| s.db_ops();
    let before = ops(&s);
    let buy = [line(1, None, Some(-2)), line(2, None, Some(-1))];
    let e = s
        .execute("two", &buy, "westeurope", false, Utc::now())
        .await
        .unwrap();
    assert_eq!(e.outcome.status, Outcome::Completed, "{e:?}");
    assert_eq!(ops(&s) - before, 3, "read, bulk write, commit");
    let before = ops(&s);
    let e = s
        .execute(
            "new",
            &[line(7, Some(4), None)],
            "westeurope",
            false,
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(e.outcome.status, Outcome::Completed, "{e:?}");
    assert_eq!(ops(&s) - before, 3, "read, bulk write (an upsert), commit");
    let products = s.products().await.unwrap();
    assert_eq!(
        products.iter().map(|p| (p.id, p.saldo)).collect::<Vec<_>>(),
        [(1, 3), (2, 4), (7, 4)]
    );
    assert_eq!(
        s.marker("two").await.unwrap().unwrap().status,
        Outcome::Completed
    );
    let before = ops(&s);
    let again = s
        .execute("two", &buy, "westeurope", false, Utc::now())
        .await
        .unwrap();
    assert!(!again.fresh);
    assert_eq!(ops(&s) - before, 2, "read, abort");
    assert_eq!(
        s.product(1).await.unwrap().unwrap().saldo,
        3,
        "applied once"
    );
}

/// The peers' outcomes of one delivery are one ledger transaction: one bump of the counter for
/// all of them, one bulk write, one commit (3 round trips, against 3 each one by one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_recorded_together_are_one_transaction() {
    let db = spawn_secantus();
    let s = store(&db, "westeurope").await;
    let txs = ["b-1", "b-2", "b-3", "b-4"];
    let cmds: Vec<NewCommand> = txs
        .iter()
        .map(|t| cmd(t, vec![line(1, None, Some(-1))]))
        .collect();
    s.insert_commands(&cmds).await.unwrap();
    let items: Vec<OutcomeToRecord> = txs
        .iter()
        .map(|t| OutcomeToRecord {
            transaction: t.to_string(),
            outcome: OutcomeRecord {
                status: Outcome::Completed,
                node: "swedencentral".into(),
                region: "swedencentral".into(),
                reason: None,
                quantities: vec![],
                at: Utc::now(),
                takeover: false,
            },
            published: true,
        })
        .collect();
    let before = s.db_ops();
    let found = s.record_outcomes(&items, Utc::now()).await.unwrap();
    assert_eq!(found, vec![Recorded::New; 4]);
    assert_eq!(s.db_ops() - before, 3, "one transaction for the four");
    let seqs: Vec<u64> = s.page(0, 10).await.unwrap().iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}
