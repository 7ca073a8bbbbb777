//! Executions against the warehouse, group-committed: all of one instance's executions waiting
//! at once go into ONE transaction (`group`). Read the markers and the products of every one
//! of them (one query), then in arrival order adopt a known outcome or decide on the stock as
//! the earlier executions of the batch left it, then ONE bulk write: each product touched once,
//! optimistically (only if its stock is still what was read), and the new markers; commit.
//!
//! Everybody buys the same few products, so executions one by one conflicted with each other on
//! them (WriteConflict, or a stock changed under us) and backed off, up to a second a time: under
//! load most of an execution's time was back-off. A batch costs 3 round trips (read, bulk write,
//! commit) however many executions and products it carries; it was 3 + (products touched) with
//! one write per product. Cosmos DB's limits: one collection (`warehouse`),
//! a short transaction (no waiting inside), at most [`MAX_EXECUTIONS_PER_TRANSACTION`]
//! executions of a few lines each.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use mongodb::ClientSession;
use mongodb::bson::{self, Bson, doc};
use saldo_core::events::ProductLine;
use saldo_core::stock::StockDecision;
use saldo_core::views::ProductView;

use super::MongoStore;
use super::documents::{MarkerDoc, ProductDoc, marker_key, product_key};
use super::group::Group;
use super::ledger_batch::bson_usize;
use super::retry::DUPLICATE_KEY;
use super::transaction::Attempt;
use crate::decide;
use crate::model::*;
use crate::origin::Kind;
use crate::{Result, StoreError};

/// Most executions one warehouse transaction carries.
pub const MAX_EXECUTIONS_PER_TRANSACTION: usize = 64;

/// One execution waiting for its batch.
#[derive(Debug, Clone)]
pub(super) struct Exec {
    pub(super) transaction: String,
    pub(super) lines: Vec<ProductLine>,
    pub(super) region: String,
    pub(super) takeover: bool,
    pub(super) now: DateTime<Utc>,
}

/// The group commit of one instance's executions.
pub(super) type ExecGroup = Group<Exec, Execution>;

pub(super) fn exec_group() -> ExecGroup {
    Group::new(MAX_EXECUTIONS_PER_TRANSACTION)
}

/// What the warehouse holds of a batch: its products and the outcomes of its markers.
struct Read {
    products: BTreeMap<u64, ProductView>,
    markers: BTreeMap<String, OutcomeRecord>,
}

impl MongoStore {
    /// One execution, in whatever batch it joins (see the module comment).
    pub(super) async fn execute_grouped(&self, exec: Exec) -> Result<Execution> {
        let write = |batch: Vec<Exec>| async move { self.execute_batch(&batch).await };
        let mut done = self
            .bounded("execute", self.executions.submit(vec![exec], write))
            .await?;
        done.pop()
            .ok_or_else(|| StoreError::Failed("execute: no answer for the execution".into()))
    }

    /// One transaction for a batch. A product changed under us, a marker committed first
    /// (11000), or the server saw the conflict (112 / TransientTransactionError): `transact`
    /// starts over, which adopts the winners' markers or re-decides on the new stock.
    async fn execute_batch(&self, batch: &[Exec]) -> Result<Vec<Execution>> {
        self.transact("execute", move |mut session| async move {
            let r = self.execute_once(&mut session, batch).await;
            (session, r)
        })
        .await
    }

    /// One attempt of a batch inside `session`'s transaction.
    async fn execute_once(
        &self,
        session: &mut ClientSession,
        batch: &[Exec],
    ) -> mongodb::error::Result<Attempt<Vec<Execution>>> {
        let read = self.read_warehouse(session, batch).await?;
        let mut stock = read.products.clone();
        let mut markers = read.markers.clone();
        let mut touched = BTreeSet::new();
        let mut new_markers = Vec::new();
        let mut done = Vec::with_capacity(batch.len());
        for e in batch {
            // Known (from the database, or decided earlier in this batch): adopted.
            if let Some(outcome) = markers.get(&e.transaction) {
                done.push(Execution {
                    outcome: outcome.clone(),
                    fresh: false,
                });
                continue;
            }
            let (decision, outcome) =
                decide(&stock, &e.lines, &self.node, &e.region, e.takeover, e.now);
            if let StockDecision::Apply { products, .. } = decision {
                for p in products {
                    assert!(
                        p.saldo >= 0,
                        "core produced negative stock for product {}",
                        p.id
                    );
                    touched.insert(p.id);
                    stock.insert(p.id, p);
                }
            }
            markers.insert(e.transaction.clone(), outcome.clone());
            new_markers.push(MarkerDoc {
                key: marker_key(&e.transaction),
                transaction: e.transaction.clone(),
                outcome: outcome.clone(),
            });
            done.push(Execution {
                outcome,
                fresh: true,
            });
        }
        if new_markers.is_empty() {
            self.count(Kind::TxnEnd);
            session.abort_transaction().await?;
            return Ok(Attempt::Done(done));
        }
        // ONE bulk write for the whole batch: each product touched, only if its stock is still
        // what was read (optimistic: catches a concurrent executor even where the server's
        // snapshot isolation would not); each new product and marker as an upsert that must
        // insert. Anything else (a stock changed, a marker or product there first) is a lost
        // race: abort, and `transact` re-reads and adopts or re-decides.
        let mut statements = Vec::new();
        let mut must_insert = BTreeSet::new();
        for id in touched {
            let p = &stock[&id];
            match read.products.get(&id) {
                None => {
                    let doc = bson::to_document(
                        &ProductDoc::from_view(p).map_err(mongodb::error::Error::custom)?,
                    )?;
                    must_insert.insert(statements.len());
                    statements.push(insert_statement(doc)?);
                }
                Some(old) => statements.push(doc! {
                    "q": {"_id": product_key(p.id), "saldo": old.saldo},
                    "u": {"$set": {"saldo": p.saldo}},
                }),
            }
        }
        for m in &new_markers {
            must_insert.insert(statements.len());
            statements.push(insert_statement(bson::to_document(m)?)?);
        }
        self.count(Kind::Write);
        self.count_docs(statements.len());
        let answer = self
            .client
            .database(&self.warehouse.namespace().db)
            .run_command(doc! {
                "update": self.warehouse.name(),
                "updates": &statements,
                "ordered": true,
            })
            .session(&mut *session)
            .await?;
        if !all_written(&answer, statements.len(), &must_insert)? {
            self.count(Kind::TxnEnd);
            // (The server may have aborted it already.)
            let _ = session.abort_transaction().await;
            return Ok(Attempt::Again);
        }
        self.commit(session).await?;
        Ok(Attempt::Done(done))
    }

    /// Reads the markers and the products of a batch in one round trip (they live in the same
    /// collection).
    async fn read_warehouse(
        &self,
        session: &mut ClientSession,
        batch: &[Exec],
    ) -> mongodb::error::Result<Read> {
        let mut keys: BTreeSet<String> = batch
            .iter()
            .flat_map(|e| e.lines.iter().map(|l| product_key(l.id)))
            .collect();
        keys.extend(batch.iter().map(|e| marker_key(&e.transaction)));
        let keys: Vec<Bson> = keys.into_iter().map(Bson::String).collect();
        self.count(Kind::Query);
        let mut cursor = self
            .warehouse
            .find(doc! {"_id": {"$in": keys}})
            .session(&mut *session)
            .await?;
        let mut read = Read {
            products: BTreeMap::new(),
            markers: BTreeMap::new(),
        };
        while let Some(d) = cursor.next(&mut *session).await.transpose()? {
            if d.get_str("_id").is_ok_and(|id| id.starts_with("tx:")) {
                let m: MarkerDoc = bson::from_document(d)?;
                read.markers.insert(m.transaction, m.outcome);
            } else {
                let p: ProductDoc = bson::from_document(d)?;
                read.products.insert(p.id as u64, p.view());
            }
        }
        drop(cursor);
        Ok(read)
    }
}

/// An upsert that inserts `doc` (with its `_id`) and changes nothing if a document with that
/// `_id` is there.
fn insert_statement(mut doc: bson::Document) -> mongodb::error::Result<bson::Document> {
    let id = doc
        .remove("_id")
        .ok_or_else(|| mongodb::error::Error::custom("execute: a document without _id"))?;
    Ok(doc! {"q": {"_id": id}, "u": {"$setOnInsert": doc}, "upsert": true})
}

/// Whether the bulk write did all it must: every statement matched or inserted, and every one
/// in `must_insert` inserted. False is a lost race (so is a duplicate key, 11000, should the
/// server report one); any other write error is an error.
fn all_written(
    answer: &bson::Document,
    statements: usize,
    must_insert: &BTreeSet<usize>,
) -> mongodb::error::Result<bool> {
    if let Ok(errors) = answer.get_array("writeErrors")
        && let Some(Bson::Document(e)) = errors.first()
    {
        if e.get_i32("code") == Ok(DUPLICATE_KEY) {
            return Ok(false);
        }
        return Err(mongodb::error::Error::custom(format!(
            "execute: write error {e}"
        )));
    }
    let upserted: BTreeSet<usize> = answer
        .get_array("upserted")
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_document()?.get("index").and_then(bson_usize))
                .collect()
        })
        .unwrap_or_default();
    let n = answer.get("n").and_then(bson_usize).unwrap_or(0);
    Ok(n == statements && must_insert.is_subset(&upserted))
}
