//! The multi-document transaction loop (snapshot reads, durable commit, retried on a lost
//! race) and the ledger's transactional writes: numbering entries from the counter, inserting
//! commands, recording outcomes.

use chrono::{DateTime, Utc};
use mongodb::ClientSession;
use mongodb::bson::{self, Bson, doc};
use mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT;
use mongodb::options::{ReadConcern, ReturnDocument};
use saldo_core::views::LedgerState;

use super::documents::{LedgerDoc, ms, parse_ledger};
use super::retry::{
    DUPLICATE_KEY, classify, code, retryable, throttled, transaction_backoff_schedule,
};
use super::{COUNTER_ID, MongoStore, durable_write_concern};
use crate::model::*;
use crate::origin::Kind;
use crate::{Detail, Result, StoreError};

/// What one attempt of a transaction came to.
pub(super) enum Attempt<T> {
    Done(T),
    /// Lost a race the server did not report as a conflict (a product changed under us, a
    /// concurrent writer's insert committed first): start over on a fresh snapshot.
    Again,
}

impl MongoStore {
    /// Runs `attempt` as one multi-document transaction (snapshot reads, durable commit) until
    /// it commits, fails for good, or conflicts past the retry budget ([`StoreError::Contended`];
    /// the budget outlasts the database's transaction lifetime, see
    /// [`TRANSACTION_RETRY_BUDGET`](super::retry::TRANSACTION_RETRY_BUDGET)).
    /// `attempt` gets a session with the transaction started; it returns `Again` (after aborting)
    /// to start over on a fresh snapshot. Bounded by the store's timeout. With `gate`, each
    /// attempt runs holding it (released before any back-off sleep).
    pub(super) async fn transact<T, F, Fut>(
        &self,
        what: &str,
        gate: Option<&tokio::sync::Mutex<()>>,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(ClientSession) -> Fut,
        Fut: Future<Output = (ClientSession, mongodb::error::Result<Attempt<T>>)>,
    {
        self.bounded(what, async {
            let mut delays = transaction_backoff_schedule();
            let mut attempts = 0;
            loop {
                attempts += 1;
                let held = match gate {
                    Some(g) => Some(g.lock().await),
                    None => None,
                };
                let mut session = self
                    .client
                    .start_session()
                    .await
                    .map_err(|e| classify(what, e))?;
                // Transactions take their write concern here, never per operation (the driver
                // drops the collections' own inside a transaction): majority, journaled.
                session
                    .start_transaction()
                    .read_concern(ReadConcern::snapshot())
                    .write_concern(durable_write_concern())
                    .await
                    .map_err(|e| classify(what, e))?;
                let (mut session, r) = attempt(session).await;
                let last = match r {
                    Ok(Attempt::Done(v)) => return Ok(v),
                    Ok(Attempt::Again) => {
                        // (An error if it already ended: nothing to abort then.)
                        let _ = session.abort_transaction().await;
                        None
                    }
                    Err(e) if retryable(&e) || code(&e) == Some(DUPLICATE_KEY) => {
                        // (An error if it already ended: nothing to abort then.)
                        let _ = session.abort_transaction().await;
                        Some(e)
                    }
                    Err(e) => {
                        // (An error if it already ended: nothing to abort then.)
                        let _ = session.abort_transaction().await;
                        return Err(classify(what, e));
                    }
                };
                drop(held);
                match delays.next() {
                    Some(wait) => {
                        tracing::debug!(what, error = ?last, ?wait, "transaction lost a race; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => {
                        return Err(match last {
                            Some(e) if throttled(&e) => classify(what, e),
                            Some(e) => StoreError::Contended(Detail::caused_by(
                                format!(
                                    "{what}: still conflicting after {attempts} attempts: {e}"
                                ),
                                e,
                            )),
                            None => StoreError::Contended(
                                format!("{what}: still racing after {attempts} attempts")
                                    .into(),
                            ),
                        });
                    }
                }
            }
        })
        .await
    }

    /// Commits `session`'s transaction; an unknown commit result is retried as the driver
    /// documents (bounded).
    pub(super) async fn commit(&self, session: &mut ClientSession) -> mongodb::error::Result<()> {
        let mut tries = 0;
        loop {
            tries += 1;
            self.count(Kind::TxnEnd);
            match session.commit_transaction().await {
                Ok(()) => return Ok(()),
                Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && tries < 3 => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Inside `session`'s transaction: takes `n` (> 0) sequence numbers from the ledger's
    /// counter and returns the first. The counter write is what serialises the ledger's writers.
    pub(super) async fn allocate(
        &self,
        session: &mut ClientSession,
        n: usize,
    ) -> mongodb::error::Result<i64> {
        self.count(Kind::Write);
        self.count_docs(1);
        let n = n as i64;
        let counter = self
            .ledger
            .find_one_and_update(doc! {"_id": COUNTER_ID}, doc! {"$inc": {"next": n}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *session)
            .await?;
        let last = counter
            .as_ref()
            .and_then(|d| d.get_i64("next").ok())
            .ok_or_else(|| {
                mongodb::error::Error::custom("the ledger's sequence counter is unreadable")
            })?;
        Ok(last - n + 1)
    }

    /// One attempt of [`Store::insert_commands`] inside `session`'s transaction. With `look`
    /// false it assumes every command is new (the common case: 3 round trips); a duplicate
    /// aborts the transaction (11000) and the caller tries again with `look`, which first reads
    /// which transactions the ledger already holds.
    pub(super) async fn insert_once(
        &self,
        session: &mut ClientSession,
        cmds: &[NewCommand],
        look: bool,
    ) -> mongodb::error::Result<Attempt<Vec<Inserted>>> {
        let mut known = std::collections::BTreeSet::new();
        if look {
            let ids: Vec<Bson> = cmds
                .iter()
                .map(|c| Bson::String(c.transaction.clone()))
                .collect();
            self.count(Kind::Query);
            let mut cursor = self
                .ledger
                .find(doc! {"_id": {"$in": ids}})
                .projection(doc! {"_id": 1})
                .session(&mut *session)
                .await?;
            while let Some(d) = cursor.next(&mut *session).await.transpose()? {
                if let Ok(id) = d.get_str("_id") {
                    known.insert(id.to_string());
                }
            }
        }
        // A transaction twice in one delivery: the first copy is the new one.
        let mut result = Vec::with_capacity(cmds.len());
        let mut fresh = Vec::new();
        for c in cmds {
            if known.insert(c.transaction.clone()) {
                result.push(Inserted::New);
                fresh.push(c);
            } else {
                result.push(Inserted::Duplicate);
            }
        }
        if fresh.is_empty() {
            self.count(Kind::TxnEnd);
            session.abort_transaction().await?;
            return Ok(Attempt::Done(result));
        }
        let first = self.allocate(session, fresh.len()).await?;
        let docs = fresh
            .iter()
            .enumerate()
            .map(|(i, c)| {
                bson::to_document(&LedgerDoc {
                    id: c.transaction.clone(),
                    state: LedgerState::Pending,
                    command: Some(c.command.clone()),
                    received_at_ms: Some(ms(c.received_at)),
                    outcome: None,
                    published: true,
                    recorded_at_ms: ms(c.received_at),
                    seq: first + i as i64,
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.count(Kind::Write);
        self.count_docs(docs.len());
        self.ledger.insert_many(docs).session(&mut *session).await?;
        self.commit(session).await?;
        Ok(Attempt::Done(result))
    }

    /// One attempt of [`Store::record_outcomes`] (and of [`Store::record_outcome`], one item)
    /// inside `session`'s transaction: one number from the counter per item, taken at once,
    /// then each entry's update, then the commit. The common case (every entry pending) is
    /// 2 + n round trips. If nothing was written (every outcome known already) the transaction
    /// is aborted; the numbers it took are never used (gaps are harmless; only order matters).
    pub(super) async fn record_many_once(
        &self,
        session: &mut ClientSession,
        items: &[OutcomeToRecord],
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Attempt<Vec<Recorded>>> {
        let first = self.allocate(session, items.len()).await?;
        let mut found = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            found.push(self.record_in(session, item, now, first + i as i64).await?);
        }
        if found.contains(&Recorded::New) {
            self.commit(session).await?;
        } else {
            self.count(Kind::TxnEnd);
            session.abort_transaction().await?;
        }
        Ok(Attempt::Done(found))
    }

    /// Inside `session`'s transaction: records one outcome as entry number `seq` if the entry is
    /// pending or absent (`New`); otherwise compares it with the known one and writes nothing.
    async fn record_in(
        &self,
        session: &mut ClientSession,
        item: &OutcomeToRecord,
        now: DateTime<Utc>,
        seq: i64,
    ) -> mongodb::error::Result<Recorded> {
        let OutcomeToRecord {
            transaction,
            outcome,
            published,
        } = item;
        let outcome_bson = bson::to_bson(outcome)?;
        let state = bson::to_bson(&LedgerState::from(outcome.status))?;
        self.count(Kind::Write);
        let updated = self
            .ledger
            .update_one(
                doc! {"_id": transaction, "state": "pending"},
                doc! {"$set": {"state": state.clone(), "outcome": outcome_bson.clone(), "published": published, "seq": seq}},
            )
            .session(&mut *session)
            .await?;
        self.count_docs(updated.modified_count as usize);
        if updated.matched_count > 0 {
            return Ok(Recorded::New);
        }
        self.count(Kind::PointRead);
        let existing = self
            .ledger
            .find_one(doc! {"_id": transaction})
            .session(&mut *session)
            .await?
            .map(|d| parse_ledger(d).map_err(mongodb::error::Error::custom))
            .transpose()?;
        if let Some(e) = existing {
            let known = e.outcome.ok_or_else(|| {
                mongodb::error::Error::custom(format!("{transaction}: neither pending nor decided"))
            })?;
            return Ok(if known.agrees_with(outcome) {
                Recorded::Same
            } else {
                Recorded::Conflict(known)
            });
        }
        // The command never arrived here: an entry with the outcome alone.
        self.count(Kind::Write);
        self.count_docs(1);
        self.ledger
            .insert_one(doc! {
                "_id": transaction, "state": state, "command": Bson::Null,
                "received_at_ms": Bson::Null, "outcome": outcome_bson,
                "published": published, "recorded_at_ms": ms(now), "seq": seq,
            })
            .session(&mut *session)
            .await?;
        Ok(Recorded::New)
    }
}
