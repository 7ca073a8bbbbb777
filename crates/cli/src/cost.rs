//! What a purchase costs the database: the round trips the workers counted, by origin and kind
//! (`dbOps.<origin>.<kind>` and `dbDocs.<origin>` in every instance's `/api/status`, see
//! `saldo_store::origin`), turned into a table per purchase with an estimate of Cosmos DB
//! request units; and the raw rate of the stack's database, to compare the fleet with.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mongodb::bson::doc;
use mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};

/// Request units per operation, from Microsoft's documentation.
///
/// "Understand request unit consumption" (learn.microsoft.com/azure/cosmos-db/understand-request-unit-consumption),
/// table "Document size": a 1 KB document costs 1.00 RU to read and 4.95 RU to write (session or
/// eventual consistency). Saldo's documents are under 1 KB (a ledger entry with its command and
/// trace context, a marker, a product, a peer record).
pub const RU_POINT_READ: f64 = 1.00;
pub const RU_WRITE_PER_DOC: f64 = 4.95;
/// "Request units" (learn.microsoft.com/cosmos-db/request-units) says only that a query
/// "consumes a variable number of RUs, potentially more than point operations". ASSUMED here:
/// 2.5 RU for one of Saldo's queries (indexed filter, a page of small documents). Printed as
/// an assumption.
pub const RU_QUERY_ASSUMED: f64 = 2.5;
/// Commit and abort: no documented charge of their own (the writes inside are billed); 0.
pub const RU_TXN_END: f64 = 0.0;

/// The origins in the order the table lists them, with what each row means.
pub const ORIGINS: [(&str, &str); 9] = [
    ("command", "commands (+ own outcome)"),
    ("execution", "execution"),
    ("ownOutcome", "own outcome + outbox"),
    ("peerOutcome", "peers' outcomes"),
    ("heartbeat", "heartbeats, liveness"),
    ("sweep", "sweeps"),
    ("catchUp", "catch-up"),
    ("read", "reads (API, polls)"),
    ("other", "other"),
];
const KINDS: [&str; 4] = ["pointRead", "query", "write", "txnEnd"];

/// One origin's share per purchase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub origin: &'static str,
    pub label: &'static str,
    /// Round trips per purchase by kind, in [`KINDS`] order.
    pub ops: [f64; 4],
    pub docs: f64,
    pub ru: f64,
}

impl Row {
    pub fn total(&self) -> f64 {
        self.ops.iter().sum()
    }
}

/// Per purchase, by origin, from the difference of the fleet's summed counters.
pub fn breakdown(delta: &BTreeMap<String, u64>, purchases: u64) -> Vec<Row> {
    let n = purchases.max(1) as f64;
    ORIGINS
        .iter()
        .map(|&(origin, label)| {
            let mut row = Row {
                origin,
                label,
                ..Row::default()
            };
            for (i, k) in KINDS.iter().enumerate() {
                row.ops[i] = delta
                    .get(&format!("dbOps.{origin}.{k}"))
                    .copied()
                    .unwrap_or(0) as f64
                    / n;
            }
            row.docs = delta.get(&format!("dbDocs.{origin}")).copied().unwrap_or(0) as f64 / n;
            row.ru = row.ops[0] * RU_POINT_READ
                + row.ops[1] * RU_QUERY_ASSUMED
                + row.docs * RU_WRITE_PER_DOC
                + row.ops[3] * RU_TXN_END;
            row
        })
        .collect()
}

/// The table `saldo bench` prints. The `read` row is the benchmark's own polling and the API's
/// reads: listed, and left out of the purchase's total.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<24} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8}",
        "per purchase, by origin",
        "points",
        "queries",
        "writes",
        "commits",
        "docs",
        "ops",
        "est. RU"
    );
    let (mut ops, mut ru) = (0.0, 0.0);
    for r in rows {
        if r.total() == 0.0 && r.docs == 0.0 {
            continue;
        }
        let _ = writeln!(
            s,
            "  {:<24} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>8.1}",
            r.label,
            r.ops[0],
            r.ops[1],
            r.ops[2],
            r.ops[3],
            r.docs,
            r.total(),
            r.ru
        );
        if r.origin != "read" {
            ops += r.total();
            ru += r.ru;
        }
    }
    let _ = writeln!(
        s,
        "  {:<24} {:>47.2} {:>8.1}",
        "total without reads", ops, ru
    );
    let _ = writeln!(
        s,
        "  (RU: {RU_POINT_READ} per point read and {RU_WRITE_PER_DOC} per document written, as \
         Microsoft documents for 1 KB; {RU_QUERY_ASSUMED} per query ASSUMED; commits 0. The API's \
         own writes (idempotency records) are not counted here.)"
    );
    s
}

/// Journaled single-document transactions per second that one plain client gets from the
/// database at `uri` (the ceiling the fleet is compared with): insert one document, commit,
/// with `{w: majority, j: true}` as the workers write, one after another for `for_at_most` or
/// `max` transactions, in a scratch collection that is dropped afterwards.
pub async fn raw_db_rate(
    uri: &str,
    database: &str,
    for_at_most: Duration,
    max: u32,
) -> Result<(u32, f64)> {
    let mut opts = mongodb::options::ClientOptions::parse(uri)
        .await
        .context("parsing the MongoDB connection string")?;
    opts.server_selection_timeout
        .get_or_insert(Duration::from_secs(10));
    opts.app_name
        .get_or_insert_with(|| "saldo-bench-raw".into());
    let client = mongodb::Client::with_options(opts)?;
    let coll = client
        .database(database)
        .collection::<mongodb::bson::Document>(&format!(
            "bench_raw_{}",
            uuid::Uuid::new_v4().simple()
        ));
    let durable = WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .build();
    let started = Instant::now();
    let mut done = 0u32;
    let result = async {
        while done < max && started.elapsed() < for_at_most {
            let mut session = client.start_session().await?;
            session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(durable.clone())
                .await?;
            coll.insert_one(doc! {"_id": i64::from(done), "at": "x"})
                .session(&mut session)
                .await?;
            session.commit_transaction().await?;
            done += 1;
        }
        anyhow::Ok(())
    }
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let _ = coll.drop().await;
    result.context("measuring the database's raw transaction rate")?;
    Ok((done, done as f64 / elapsed.max(1e-9)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breakdown_divides_by_purchases_and_prices_documents_written() {
        let delta = BTreeMap::from([
            ("dbOps.command.write".to_string(), 60),
            ("dbOps.command.txnEnd".to_string(), 30),
            ("dbDocs.command".to_string(), 60),
            ("dbOps.read.pointRead".to_string(), 100),
            ("dbOps.sweep.query".to_string(), 20),
            ("dbOps".to_string(), 210),
        ]);
        let rows = breakdown(&delta, 10);
        let cmd = rows.iter().find(|r| r.origin == "command").unwrap();
        assert_eq!(cmd.ops, [0.0, 0.0, 6.0, 3.0]);
        assert!((cmd.ru - 6.0 * RU_WRITE_PER_DOC).abs() < 1e-9);
        let sweep = rows.iter().find(|r| r.origin == "sweep").unwrap();
        assert!((sweep.ru - 2.0 * RU_QUERY_ASSUMED).abs() < 1e-9);
        let t = table(&rows);
        assert!(t.contains("commands (+ own outcome)"), "{t}");
        assert!(t.contains("reads (API, polls)"), "{t}");
        assert!(
            !t.contains("catch-up"),
            "rows without ops are left out: {t}"
        );
        // The total leaves the reads out: 6 + 3 + 2 = 11 round trips.
        let total = t
            .lines()
            .find(|l| l.contains("total without reads"))
            .unwrap();
        assert!(total.contains("11.00"), "{total}");
    }
}
