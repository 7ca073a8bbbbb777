//! The multi-document transaction loop (snapshot reads, durable commit, retried on a lost
//! race) and numbering ledger entries from the counter (the ledger's writes themselves are
//! `ledger_batch`'s).

use mongodb::ClientSession;
use mongodb::bson::doc;
use mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT;
use mongodb::options::{ReadConcern, ReturnDocument};

use super::retry::{
    DUPLICATE_KEY, classify, code, retryable, throttled, transaction_backoff_schedule,
};
use super::{COUNTER_ID, MongoStore, durable_write_concern};
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
    /// to start over on a fresh snapshot. Bounded by the store's timeout.
    pub(super) async fn transact<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut(ClientSession) -> Fut,
        Fut: Future<Output = (ClientSession, mongodb::error::Result<Attempt<T>>)>,
    {
        self.bounded(what, async {
            let mut delays = transaction_backoff_schedule();
            let mut attempts = 0;
            loop {
                attempts += 1;
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
}
