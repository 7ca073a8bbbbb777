//! The [`Store`] operations over MongoDB.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::IndexModel;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::{IndexOptions, ReturnDocument};
use saldo_core::events::ProductLine;
use saldo_core::views::ProductView;

use super::documents::{
    MarkerDoc, PeerDoc, ProductDoc, marker_key, ms, parse_ledger, product_key, to_i64,
};
use super::execute::Exec;
use super::ledger_batch::{Done, Item};
use super::retry::{DUPLICATE_KEY, classify, code};
use super::transaction::Attempt;
use super::{COUNTER_ID, MongoStore};
use crate::model::*;
use crate::origin::Kind;
use crate::{Detail, MAX_PAGE, MAX_PRODUCTS, Quarantined, Result, Store, StoreError};

impl MongoStore {
    pub(super) async fn find_ledger(
        &self,
        what: &str,
        filter: Document,
        sort: Document,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>> {
        let limit = limit.clamp(1, MAX_PAGE) as i64;
        let docs: Vec<Document> = self
            .retry(what, Kind::Query, || async {
                self.ledger
                    .find(filter.clone())
                    .sort(sort.clone())
                    .limit(limit)
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        docs.into_iter().map(parse_ledger).collect()
    }
}

impl Store for MongoStore {
    async fn quarantine(&self, events: &[Quarantined]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let docs = events
            .iter()
            .map(|q| {
                bson::to_document(q).map_err(|e| {
                    StoreError::Failed(Detail::caused_by(
                        format!("encode quarantined event: {e}"),
                        e,
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let coll = self.quarantine_collection();
        self.count_docs(docs.len());
        match self
            .retry_raw("quarantine", Kind::Write, || {
                coll.insert_many(docs.clone()).ordered(false)
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                if let ErrorKind::InsertMany(im) = e.kind.as_ref()
                    && im.write_concern_error.is_none()
                    && let Some(errors) = &im.write_errors
                    && errors.iter().all(|w| w.code == DUPLICATE_KEY)
                {
                    return Ok(()); // already quarantined: the same event delivered again
                }
                Err(classify("quarantine", e))
            }
        }
    }

    async fn quarantined(&self, limit: usize) -> Result<Vec<Quarantined>> {
        let coll = self
            .quarantine_collection()
            .clone_with_type::<Quarantined>();
        let limit = limit.clamp(1, crate::MAX_PAGE) as i64;
        let cursor = self
            .retry("read quarantine", Kind::Query, || {
                coll.find(doc! {}).sort(doc! {"atMs": -1}).limit(limit)
            })
            .await?;
        cursor
            .try_collect()
            .await
            .map_err(|e| classify("read quarantine", e))
    }

    fn node(&self) -> &str {
        &self.node
    }

    async fn init(&self) -> Result<()> {
        let idx = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_string()).build())
                .build()
        };
        let ledger_indexes = [
            idx(doc! {"seq": 1}, "seq"),
            idx(doc! {"state": 1, "received_at_ms": 1}, "state_received"),
            idx(doc! {"published": 1}, "published"),
            // Cosmos DB sorts only by indexed fields: the pending scan sorts by this one.
            idx(doc! {"received_at_ms": 1}, "received"),
        ];
        for model in ledger_indexes {
            self.retry("create ledger index", Kind::Write, || {
                self.ledger.create_index(model.clone())
            })
            .await?;
        }
        // The warehouse and peers are only ever read by `_id` (ranges of it): no extra index.
        // The counter starts above every number already given out (a ledger written before the
        // counter existed numbered entries from the clock; peers' cursors point into that
        // range). `$max` never lowers it, so running this while others write is harmless.
        let last: Option<Document> = self
            .retry("read last seq", Kind::Query, || {
                self.ledger
                    .find_one(doc! {"seq": {"$gte": 0}})
                    .sort(doc! {"seq": -1})
            })
            .await?;
        let last_seq = match last {
            Some(d) => to_i64(parse_ledger(d)?.seq, "seq")?,
            None => 0,
        };
        self.retry("init sequence counter", Kind::Write, || {
            self.ledger
                .update_one(doc! {"_id": COUNTER_ID}, doc! {"$max": {"next": last_seq}})
                .upsert(true)
        })
        .await?;
        Ok(())
    }

    fn db_ops(&self) -> u64 {
        self.ops.total()
    }

    fn db_ops_by_origin(&self) -> std::collections::BTreeMap<String, u64> {
        self.ops.snapshot()
    }

    async fn insert_commands(&self, cmds: &[NewCommand]) -> Result<Vec<Inserted>> {
        let items = cmds.iter().cloned().map(Item::Command).collect();
        self.write_ledger("insert commands", items)
            .await?
            .into_iter()
            .map(Done::inserted)
            .collect()
    }

    async fn record_outcome(
        &self,
        transaction: &str,
        outcome: &OutcomeRecord,
        published: bool,
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        let item = [OutcomeToRecord {
            transaction: transaction.to_string(),
            outcome: outcome.clone(),
            published,
        }];
        let mut found = self.record_outcomes(&item, now).await?;
        Ok(found.pop().expect("one answer per item"))
    }

    async fn record_outcomes(
        &self,
        items: &[OutcomeToRecord],
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>> {
        let items = items
            .iter()
            .map(|o| Item::Outcome {
                transaction: o.transaction.clone(),
                outcome: o.outcome.clone(),
                published: o.published,
                now,
            })
            .collect();
        self.write_ledger("record outcome", items)
            .await?
            .into_iter()
            .map(Done::recorded)
            .collect()
    }

    async fn write_entries(
        &self,
        cmds: &[NewCommand],
        outcomes: &[OutcomeToRecord],
        now: DateTime<Utc>,
    ) -> Result<(Vec<Inserted>, Vec<Recorded>)> {
        // Each command's own outcome right after it, so that the batch writes the two as one
        // statement (`ledger_batch`); the other outcomes after all the commands.
        let outcome_item = |o: &OutcomeToRecord| Item::Outcome {
            transaction: o.transaction.clone(),
            outcome: o.outcome.clone(),
            published: o.published,
            now,
        };
        let mut items = Vec::with_capacity(cmds.len() + outcomes.len());
        // Per item: a command's index, or an outcome's.
        let mut whose = Vec::with_capacity(items.capacity());
        let mut unpaired: std::collections::BTreeMap<&str, usize> = outcomes
            .iter()
            .enumerate()
            .map(|(j, o)| (o.transaction.as_str(), j))
            .collect();
        let mut paired = vec![false; outcomes.len()];
        for (i, c) in cmds.iter().enumerate() {
            items.push(Item::Command(c.clone()));
            whose.push(Ok(i));
            if let Some(j) = unpaired.remove(c.transaction.as_str()) {
                paired[j] = true;
                items.push(outcome_item(&outcomes[j]));
                whose.push(Err(j));
            }
        }
        for (j, o) in outcomes.iter().enumerate().filter(|(j, _)| !paired[*j]) {
            items.push(outcome_item(o));
            whose.push(Err(j));
        }
        if items.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let done = self.write_ledger("write entries", items).await?;
        let mut inserted = vec![None; cmds.len()];
        let mut recorded = vec![None; outcomes.len()];
        for (d, w) in done.into_iter().zip(whose) {
            match w {
                Ok(i) => inserted[i] = Some(d.inserted()?),
                Err(j) => recorded[j] = Some(d.recorded()?),
            }
        }
        Ok((
            inserted
                .into_iter()
                .map(|r| r.expect("one answer per command"))
                .collect(),
            recorded
                .into_iter()
                .map(|r| r.expect("one answer per outcome"))
                .collect(),
        ))
    }

    async fn mark_published(&self, transactions: &[String]) -> Result<()> {
        if transactions.is_empty() {
            return Ok(());
        }
        let ids: Vec<Bson> = transactions
            .iter()
            .map(|t| Bson::String(t.clone()))
            .collect();
        self.count_docs(ids.len());
        self.retry("mark published", Kind::Write, || {
            self.ledger.update_many(
                doc! {"_id": {"$in": ids.clone()}},
                doc! {"$set": {"published": true}},
            )
        })
        .await?;
        Ok(())
    }

    async fn pending(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.find_ledger(
            "pending",
            doc! {"state": "pending"},
            doc! {"received_at_ms": 1},
            limit,
        )
        .await
    }

    async fn unpublished(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        self.find_ledger(
            "unpublished",
            doc! {"published": false},
            doc! {"seq": 1},
            limit,
        )
        .await
    }

    async fn entry(&self, transaction: &str) -> Result<Option<LedgerEntry>> {
        let d = self
            .retry("ledger entry", Kind::PointRead, || {
                self.ledger.find_one(doc! {"_id": transaction})
            })
            .await?;
        d.map(parse_ledger).transpose()
    }

    async fn entries(&self, transactions: &[String]) -> Result<Vec<LedgerEntry>> {
        let mut out = Vec::with_capacity(transactions.len());
        for chunk in transactions.chunks(MAX_PAGE) {
            let ids: Vec<Bson> = chunk.iter().map(|t| Bson::String(t.clone())).collect();
            let found = self
                .find_ledger(
                    "ledger entries",
                    doc! {"_id": {"$in": ids}},
                    doc! {"seq": 1},
                    chunk.len(),
                )
                .await?;
            out.extend(found);
        }
        Ok(out)
    }

    async fn page(&self, after: u64, limit: usize) -> Result<Vec<LedgerEntry>> {
        // One snapshot (a read-only transaction), so that the page is a prefix of the commit
        // order: whatever it holds, it holds every entry numbered below it (see `ledger`). A
        // plain find may see a later commit after passing an earlier one between its batches.
        let after = to_i64(after, "cursor")?;
        let limit = limit.clamp(1, MAX_PAGE) as i64;
        self.transact("ledger page", move |mut session| async move {
            let r = async {
                self.count(Kind::Query);
                let mut cursor = self
                    .ledger
                    .find(doc! {"seq": {"$gt": after}})
                    .sort(doc! {"seq": 1})
                    .limit(limit)
                    .session(&mut session)
                    .await?;
                let mut docs = Vec::new();
                while let Some(d) = cursor.next(&mut session).await.transpose()? {
                    docs.push(d);
                }
                drop(cursor);
                self.commit(&mut session).await?;
                Ok(Attempt::Done(docs))
            }
            .await;
            (session, r)
        })
        .await?
        .into_iter()
        .map(parse_ledger)
        .collect()
    }

    async fn recent(&self, limit: usize) -> Result<Vec<LedgerEntry>> {
        // `seq` is indexed (Cosmos DB sorts only by indexed fields); the filter leaves out the
        // sequence counter.
        self.find_ledger(
            "ledger recent",
            doc! {"seq": {"$gte": 0}},
            doc! {"seq": -1},
            limit.min(MAX_PAGE),
        )
        .await
    }

    async fn record_peer(&self, peer: &PeerRecord) -> Result<bool> {
        let mut d = bson::to_document(&PeerDoc::from(peer))
            .map_err(|e| StoreError::Failed(Detail::caused_by(format!("encode peer: {e}"), e)))?;
        let id = format!("node:{}", peer.node);
        d.insert("_id", id.clone());
        let (inc, beat) = (to_i64(peer.incarnation, "incarnation")?, ms(peer.beat_at));
        // Matches only an older record; if a newer one is stored, the upsert's insert collides
        // on `_id` (11000): not newer. One atomic write, whichever instance heard it.
        let r = self
            .retry_raw("record peer", Kind::Write, || {
                self.peers
                    .replace_one(
                        doc! {"_id": &id, "$or": [
                            {"incarnation": {"$exists": false}},
                            {"incarnation": {"$lt": inc}},
                            {"incarnation": inc, "beat_at_ms": {"$lt": beat}},
                        ]},
                        d.clone(),
                    )
                    .upsert(true)
            })
            .await;
        match r {
            Ok(_) => {
                self.count_docs(1);
                Ok(true)
            }
            Err(e) if code(&e) == Some(DUPLICATE_KEY) => Ok(false),
            Err(e) => Err(classify("record peer", e)),
        }
    }

    async fn next_incarnation(&self) -> Result<u64> {
        self.count_docs(1);
        let d = self
            .retry("next incarnation", Kind::Write, || {
                self.peers
                    .find_one_and_update(doc! {"_id": "incarnation"}, doc! {"$inc": {"n": 1i64}})
                    .upsert(true)
                    .return_document(ReturnDocument::After)
            })
            .await?;
        d.and_then(|d| d.get_i64("n").ok())
            .map(|n| n.max(0) as u64)
            .ok_or_else(|| StoreError::Failed("unreadable incarnation counter".into()))
    }

    async fn peers(&self) -> Result<Vec<PeerRecord>> {
        let docs: Vec<Document> = self
            .retry("list peers", Kind::Query, || async {
                self.peers
                    .find(doc! {"_id": {"$gte": "node:", "$lt": "node;"}})
                    .limit(1000)
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        docs.into_iter()
            .map(|d| {
                bson::from_document::<PeerDoc>(d)
                    .map_err(|e| {
                        StoreError::Failed(Detail::caused_by(format!("unreadable peer: {e}"), e))
                    })
                    .and_then(PeerRecord::try_from)
            })
            .collect()
    }

    async fn cursor(&self, url: &str) -> Result<u64> {
        let d = self
            .retry("read cursor", Kind::PointRead, || {
                self.peers.find_one(doc! {"_id": format!("cursor:{url}")})
            })
            .await?;
        let Some(d) = d else {
            return Ok(0); // never caught up from this peer: from the start
        };
        match d.get_i64("cursor").ok().and_then(|c| u64::try_from(c).ok()) {
            Some(c) => Ok(c),
            // Reading the peer's feed from the start again is safe (recording an outcome we
            // hold is a no-op) and the next round overwrites the cursor: heal, but loudly.
            None => {
                tracing::error!(peer = url, document = %d, "corrupt catch-up cursor; reading the peer's feed from the start");
                Ok(0)
            }
        }
    }

    async fn set_cursor(&self, url: &str, cursor: u64) -> Result<()> {
        let c = to_i64(cursor, "cursor")?;
        self.count_docs(1);
        self.retry("write cursor", Kind::Write, || {
            self.peers
                .update_one(
                    doc! {"_id": format!("cursor:{url}")},
                    doc! {"$set": {"url": url, "cursor": c}},
                )
                .upsert(true)
        })
        .await?;
        Ok(())
    }

    async fn execute(
        &self,
        transaction: &str,
        lines: &[ProductLine],
        region: &str,
        takeover: bool,
        now: DateTime<Utc>,
    ) -> Result<Execution> {
        self.execute_grouped(Exec {
            transaction: transaction.to_string(),
            lines: lines.to_vec(),
            region: region.to_string(),
            takeover,
            now,
        })
        .await
    }

    async fn marker(&self, transaction: &str) -> Result<Option<OutcomeRecord>> {
        let d = self
            .retry("read marker", Kind::PointRead, || {
                self.warehouse
                    .find_one(doc! {"_id": marker_key(transaction)})
            })
            .await?;
        d.map(|d| {
            bson::from_document::<MarkerDoc>(d)
                .map(|m| m.outcome)
                .map_err(|e| {
                    StoreError::Failed(Detail::caused_by(format!("unreadable marker: {e}"), e))
                })
        })
        .transpose()
    }

    async fn products(&self) -> Result<Vec<ProductView>> {
        let docs: Vec<Document> = self
            .retry("list products", Kind::Query, || async {
                // `_id` range instead of a type field: served by the `_id` index everywhere.
                self.warehouse
                    .find(doc! {"_id": {"$gte": "product:", "$lt": "product;"}})
                    .limit(MAX_PRODUCTS as i64)
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        let mut v = docs
            .into_iter()
            .map(|d| {
                bson::from_document::<ProductDoc>(d)
                    .map(|p| p.view())
                    .map_err(|e| {
                        StoreError::Failed(Detail::caused_by(format!("unreadable product: {e}"), e))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        v.sort_by_key(|p| p.id);
        Ok(v)
    }

    async fn product(&self, id: u64) -> Result<Option<ProductView>> {
        let d = self
            .retry("read product", Kind::PointRead, || {
                self.warehouse.find_one(doc! {"_id": product_key(id)})
            })
            .await?;
        d.map(|d| {
            bson::from_document::<ProductDoc>(d)
                .map(|p| p.view())
                .map_err(|e| {
                    StoreError::Failed(Detail::caused_by(format!("unreadable product: {e}"), e))
                })
        })
        .transpose()
    }
}
