//! One execution against the warehouse, inside a transaction: read the marker and the
//! products, adopt a known outcome or decide, write the stock optimistically, insert the marker.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use mongodb::ClientSession;
use mongodb::bson::{self, Bson, Document, doc};
use saldo_core::events::ProductLine;
use saldo_core::stock::StockDecision;
use saldo_core::views::ProductView;

use super::MongoStore;
use super::documents::{MarkerDoc, ProductDoc, marker_key, product_key};
use crate::decide;
use crate::model::*;
use crate::origin::Kind;

impl MongoStore {
    /// One attempt of an execution inside `session`'s transaction. `Ok(None)`: a concurrent
    /// executor changed a product under us; the caller retries from the start.
    pub(super) async fn execute_once(
        &self,
        session: &mut ClientSession,
        transaction: &str,
        lines: &[ProductLine],
        region: &str,
        takeover: bool,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<Execution>> {
        let mkey = marker_key(transaction);
        let (current, marker) = self.read_warehouse(session, &mkey, lines).await?;
        if let Some(outcome) = marker {
            self.count(Kind::TxnEnd);
            session.abort_transaction().await?;
            return Ok(Some(Execution {
                outcome,
                fresh: false,
            }));
        }
        let (decision, outcome) = decide(&current, lines, &self.node, region, takeover, now);
        let mut inserts = Vec::new();
        if let StockDecision::Apply { products, .. } = &decision {
            match self.write_stock(session, products, &current).await? {
                Some(new_products) => inserts = new_products,
                None => return Ok(None),
            }
        }
        let marker_doc = MarkerDoc {
            key: mkey,
            transaction: transaction.to_string(),
            outcome: outcome.clone(),
        };
        inserts.push(bson::to_document(&marker_doc)?);
        // A duplicate key here (11000) means a concurrent executor committed the marker (or a
        // product) first: the transaction aborts and the caller re-reads and adopts.
        self.count(Kind::Write);
        self.count_docs(inserts.len());
        self.warehouse
            .insert_many(inserts)
            .session(&mut *session)
            .await?;
        self.commit(session).await?;
        Ok(Some(Execution {
            outcome,
            fresh: true,
        }))
    }

    /// Reads the transaction's marker and the products of its lines, in one round trip (they
    /// live in the same collection): the products found, and the marker's outcome if any.
    async fn read_warehouse(
        &self,
        session: &mut ClientSession,
        mkey: &str,
        lines: &[ProductLine],
    ) -> mongodb::error::Result<(BTreeMap<u64, ProductView>, Option<OutcomeRecord>)> {
        let mut keys: Vec<Bson> = lines
            .iter()
            .map(|l| Bson::String(product_key(l.id)))
            .collect();
        keys.push(Bson::String(mkey.to_string()));
        // One read for the marker and all products (they live in the same collection).
        self.count(Kind::Query);
        let mut cursor = self
            .warehouse
            .find(doc! {"_id": {"$in": keys}})
            .session(&mut *session)
            .await?;
        let mut current = BTreeMap::new();
        let mut marker = None;
        while let Some(d) = cursor.next(&mut *session).await.transpose()? {
            if d.get_str("_id").is_ok_and(|id| id == mkey) {
                let m: MarkerDoc = bson::from_document(d)?;
                marker = Some(m.outcome);
            } else {
                let p: ProductDoc = bson::from_document(d)?;
                current.insert(p.id as u64, p.view());
            }
        }
        drop(cursor);
        Ok((current, marker))
    }

    /// Writes the decided stock: products already stored are updated only if their stock is
    /// still what was read; new ones are returned, to be inserted with the marker. `Ok(None)`:
    /// a product changed under us (the transaction is aborted).
    async fn write_stock(
        &self,
        session: &mut ClientSession,
        products: &[ProductView],
        current: &BTreeMap<u64, ProductView>,
    ) -> mongodb::error::Result<Option<Vec<Document>>> {
        let mut inserts = Vec::new();
        for p in products {
            assert!(
                p.saldo >= 0,
                "core produced negative stock for product {}",
                p.id
            );
            let doc = bson::to_document(
                &ProductDoc::from_view(p).map_err(mongodb::error::Error::custom)?,
            )?;
            match current.get(&p.id) {
                None => inserts.push(doc),
                Some(old) => {
                    // Optimistic check: only if the stock is still what we read. Catches a
                    // concurrent executor even where the server's snapshot isolation would not.
                    self.count(Kind::Write);
                    self.count_docs(1);
                    let r = self
                        .warehouse
                        .update_one(
                            doc! {"_id": product_key(p.id), "saldo": old.saldo},
                            doc! {"$set": {"saldo": p.saldo}},
                        )
                        .session(&mut *session)
                        .await?;
                    if r.matched_count != 1 {
                        self.count(Kind::TxnEnd);
                        session.abort_transaction().await?;
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(inserts))
    }
}
