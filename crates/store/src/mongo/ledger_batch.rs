//! Group commit of the ledger's numbered writes: commands and outcomes.
//!
//! Every write that numbers ledger entries is one transaction that bumps the ledger's counter
//! (see [`MongoStore`]'s `ledger`), so two of them at once conflict (WriteConflict 112) and one
//! backs off. Under load an instance would spend its time retrying against itself. Instead,
//! each instance writes its ledger through one queue (`group`): whoever finds no transaction
//! running takes everything queued (up to [`MAX_BATCH_ITEMS`] entries) and writes it in ONE
//! transaction of three round trips, whatever the number of entries:
//!
//! 1. take as many numbers from the counter as there are statements (unused ones are gaps,
//!    which cost nothing);
//! 2. one `update` command with one upsert statement per entry (a bulk write: one request):
//!    a command is `$setOnInsert` (inserted if its transaction is new, else a duplicate); an
//!    outcome matches only a pending entry (`$set`) or inserts an outcome-only entry;
//! 3. commit.
//!
//! A command followed in the batch by its own outcome (an owner that executed it before
//! recording it, `Store::write_entries`) is one statement: the entry is written once, decided.
//!
//! An outcome for an entry already decided makes its upsert collide on `_id` (11000): the
//! attempt is abandoned and the batch written again "carefully", reading the entries first
//! (one query) and comparing the known outcomes (same or conflicting) in memory. Commit order
//! still equals sequence order, so the feed still cannot skip.
//!
//! Cosmos DB's limits: one unsharded collection (the ledger), a few seconds (three round trips),
//! and the request size: at most [`MAX_BATCH_ITEMS`] statements of well under 1 KB each.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use mongodb::ClientSession;
use mongodb::bson::{self, Bson, Document, doc};
use saldo_core::views::LedgerState;

use super::MongoStore;
use super::documents::{ms, parse_ledger};
use super::retry::DUPLICATE_KEY;
use super::transaction::Attempt;
use crate::Result;
use crate::model::*;
use crate::origin::Kind;

/// Most entries one ledger transaction writes. A request larger than this (a delivery of up to
/// 5,000 commands) is written in chunks of this size, one after another.
pub const MAX_BATCH_ITEMS: usize = 500;

/// One entry to write.
#[derive(Debug, Clone)]
pub(super) enum Item {
    Command(NewCommand),
    Outcome {
        transaction: String,
        outcome: OutcomeRecord,
        published: bool,
        now: DateTime<Utc>,
    },
}

impl Item {
    fn transaction(&self) -> &str {
        match self {
            Item::Command(c) => &c.transaction,
            Item::Outcome { transaction, .. } => transaction,
        }
    }
}

/// What writing one entry found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Done {
    Inserted(Inserted),
    Recorded(Recorded),
}

impl Done {
    /// A command's answer; an outcome's here would be a bug of the batch.
    pub(super) fn inserted(self) -> Result<Inserted> {
        match self {
            Done::Inserted(i) => Ok(i),
            Done::Recorded(r) => Err(crate::StoreError::Failed(
                format!("insert commands: a command was answered as an outcome ({r:?})").into(),
            )),
        }
    }

    /// An outcome's answer; a command's here would be a bug of the batch.
    pub(super) fn recorded(self) -> Result<Recorded> {
        match self {
            Done::Recorded(r) => Ok(r),
            Done::Inserted(i) => Err(crate::StoreError::Failed(
                format!("record outcome: an outcome was answered as a command ({i:?})").into(),
            )),
        }
    }
}

/// The group commit of one instance's ledger writes.
pub(super) type LedgerGroup = super::group::Group<Item, Done>;

pub(super) fn ledger_group() -> LedgerGroup {
    super::group::Group::new(MAX_BATCH_ITEMS)
}

/// The state of one transaction's entry as a careful attempt sees it (read, then updated by the
/// batch's own earlier entries).
#[derive(Clone)]
enum Known {
    Pending,
    Decided(OutcomeRecord),
}

impl MongoStore {
    /// Writes `items` to the ledger through the group commit; results in the same order.
    pub(super) async fn write_ledger(&self, what: &str, items: Vec<Item>) -> Result<Vec<Done>> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(MAX_BATCH_ITEMS) {
            let write = |items: Vec<Item>| async move { self.write_batch(&items).await };
            let done = self
                .bounded(what, self.group.submit(chunk.to_vec(), write))
                .await?;
            out.extend(done);
        }
        Ok(out)
    }

    /// One transaction for the whole batch (see the module comment).
    async fn write_batch(&self, items: &[Item]) -> Result<Vec<Done>> {
        let careful = &AtomicBool::new(false);
        self.transact("ledger batch", move |mut session| async move {
            let r = self.batch_once(&mut session, items, careful).await;
            (session, r)
        })
        .await
    }

    /// Reads the entries the batch touches (a careful attempt).
    async fn known(
        &self,
        session: &mut ClientSession,
        items: &[Item],
    ) -> mongodb::error::Result<BTreeMap<String, Known>> {
        let ids: BTreeSet<&str> = items.iter().map(Item::transaction).collect();
        let ids: Vec<Bson> = ids.into_iter().map(|t| Bson::String(t.into())).collect();
        self.count(Kind::Query);
        let mut cursor = self
            .ledger
            .find(doc! {"_id": {"$in": ids}})
            .session(&mut *session)
            .await?;
        let mut known = BTreeMap::new();
        while let Some(d) = cursor.next(&mut *session).await.transpose()? {
            let e = parse_ledger(d).map_err(mongodb::error::Error::custom)?;
            let k = match e.outcome {
                Some(o) => Known::Decided(o),
                None => Known::Pending,
            };
            known.insert(e.transaction, k);
        }
        Ok(known)
    }

    /// One attempt: the statements, their numbers, one bulk write, commit.
    async fn batch_once(
        &self,
        session: &mut ClientSession,
        items: &[Item],
        careful: &AtomicBool,
    ) -> mongodb::error::Result<Attempt<Vec<Done>>> {
        let mut known = if careful.load(Ordering::Relaxed) {
            Some(self.known(session, items).await?)
        } else {
            None
        };
        // Per item: its statement's index, or what it found without one.
        let mut plan: Vec<std::result::Result<usize, Done>> = Vec::with_capacity(items.len());
        let mut kept: Vec<&Item> = Vec::new();
        for item in items {
            let decided = known.as_mut().map(|k| decide(k, item));
            match decided {
                Some(Some(done)) => plan.push(Err(done)),
                _ => {
                    plan.push(Ok(kept.len()));
                    kept.push(item);
                }
            }
        }
        if kept.is_empty() {
            self.count(Kind::TxnEnd);
            session.abort_transaction().await?;
            return Ok(Attempt::Done(
                plan.into_iter()
                    .map(|p| p.expect_err("no statements"))
                    .collect(),
            ));
        }
        // A command followed by its own outcome (an owner that executed before recording) is
        // ONE statement: the entry is written once, decided.
        let mut at: Vec<usize> = Vec::with_capacity(kept.len());
        let mut pairs: Vec<(&Item, Option<&Item>)> = Vec::new();
        let mut i = 0;
        while i < kept.len() {
            let next = kept.get(i + 1).copied();
            let merged = matches!((kept[i], next), (Item::Command(c), Some(o @ Item::Outcome { .. })) if o.transaction() == c.transaction);
            at.push(pairs.len());
            if merged {
                at.push(pairs.len());
                pairs.push((kept[i], next));
                i += 2;
            } else {
                pairs.push((kept[i], None));
                i += 1;
            }
        }
        let first = self.allocate(session, pairs.len()).await?;
        let statements = pairs
            .iter()
            .enumerate()
            .map(|(i, (item, outcome))| match outcome {
                None => statement(item, first + i as i64),
                Some(outcome) => decided_statement(item, outcome, first + i as i64),
            })
            .collect::<mongodb::error::Result<Vec<Document>>>()?;
        self.count(Kind::Write);
        self.count_docs(statements.len());
        let answer = self
            .client
            .database(&self.ledger.namespace().db)
            .run_command(doc! {
                "update": self.ledger.name(),
                "updates": &statements,
                "ordered": true,
            })
            .session(&mut *session)
            .await?;
        let upserted = match check_answer(&answer, statements.len())? {
            Answer::Written(u) => u,
            Answer::Duplicate => {
                careful.store(true, Ordering::Relaxed);
                self.count(Kind::TxnEnd);
                // (The server may have aborted it already.)
                let _ = session.abort_transaction().await;
                return Ok(Attempt::Again);
            }
        };
        self.commit(session).await?;
        Ok(Attempt::Done(
            plan.into_iter()
                .map(|p| match p {
                    Err(done) => done,
                    Ok(i) => match kept[i] {
                        Item::Command(_) if upserted.contains(&at[i]) => {
                            Done::Inserted(Inserted::New)
                        }
                        Item::Command(_) => Done::Inserted(Inserted::Duplicate),
                        // Matched a pending entry, or inserted an outcome-only one.
                        Item::Outcome { .. } => Done::Recorded(Recorded::New),
                    },
                })
                .collect(),
        ))
    }
}

/// A careful attempt's verdict on an item from what is known (updated as if written): `None`
/// if it needs a statement.
fn decide(known: &mut BTreeMap<String, Known>, item: &Item) -> Option<Done> {
    match item {
        Item::Command(c) => match known.get(&c.transaction) {
            Some(_) => Some(Done::Inserted(Inserted::Duplicate)),
            None => {
                known.insert(c.transaction.clone(), Known::Pending);
                None
            }
        },
        Item::Outcome {
            transaction,
            outcome,
            ..
        } => match known.get(transaction) {
            Some(Known::Decided(k)) if k.agrees_with(outcome) => {
                Some(Done::Recorded(Recorded::Same))
            }
            Some(Known::Decided(k)) => Some(Done::Recorded(Recorded::Conflict(k.clone()))),
            _ => {
                known.insert(transaction.clone(), Known::Decided(outcome.clone()));
                None
            }
        },
    }
}

/// The upsert statement that writes `item` as entry number `seq`.
fn statement(item: &Item, seq: i64) -> mongodb::error::Result<Document> {
    Ok(match item {
        Item::Command(c) => {
            let at = ms(c.received_at);
            doc! {
                "q": {"_id": &c.transaction},
                "u": {"$setOnInsert": {
                    "state": bson::to_bson(&LedgerState::Pending)?,
                    "command": bson::to_bson(&c.command)?,
                    "received_at_ms": at,
                    "outcome": Bson::Null,
                    "published": true,
                    "recorded_at_ms": at,
                    "seq": seq,
                }},
                "upsert": true,
            }
        }
        Item::Outcome {
            transaction,
            outcome,
            published,
            now,
        } => doc! {
            "q": {"_id": transaction, "state": bson::to_bson(&LedgerState::Pending)?},
            "u": {
                "$set": {
                    "state": bson::to_bson(&LedgerState::from(outcome.status))?,
                    "outcome": bson::to_bson(outcome)?,
                    "published": *published,
                    "seq": seq,
                },
                "$setOnInsert": {
                    "command": Bson::Null,
                    "received_at_ms": Bson::Null,
                    "recorded_at_ms": ms(*now),
                },
            },
            "upsert": true,
        },
    })
}

/// The one upsert statement that writes a command and its outcome (`command`, then `outcome`
/// of the same transaction) as entry number `seq`: it decides a pending entry (the command was
/// there: a duplicate), or inserts the entry decided. An entry decided already makes it collide
/// on `_id` (11000), as an outcome's statement does.
fn decided_statement(command: &Item, outcome: &Item, seq: i64) -> mongodb::error::Result<Document> {
    let (Item::Command(c), Item::Outcome { .. }) = (command, outcome) else {
        return Err(mongodb::error::Error::custom(
            "ledger batch: a decided entry is a command and then its outcome",
        ));
    };
    let mut s = statement(outcome, seq)?;
    let at = ms(c.received_at);
    s.get_document_mut("u")
        .map_err(mongodb::error::Error::custom)?
        .insert(
            "$setOnInsert",
            doc! {
                "command": bson::to_bson(&c.command)?,
                "received_at_ms": at,
                "recorded_at_ms": at,
            },
        );
    Ok(s)
}

/// What the bulk write's answer says.
enum Answer {
    /// The statements' indexes that inserted.
    Written(BTreeSet<usize>),
    /// An outcome met an entry already decided (11000 on `_id`): try again carefully.
    Duplicate,
}

fn check_answer(answer: &Document, statements: usize) -> mongodb::error::Result<Answer> {
    if let Ok(errors) = answer.get_array("writeErrors")
        && let Some(Bson::Document(e)) = errors.first()
    {
        if e.get_i32("code") == Ok(DUPLICATE_KEY) {
            return Ok(Answer::Duplicate);
        }
        return Err(mongodb::error::Error::custom(format!(
            "ledger batch: write error {e}"
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
    if n != statements {
        return Err(mongodb::error::Error::custom(format!(
            "ledger batch: {n} of {statements} statements matched or inserted"
        )));
    }
    Ok(Answer::Written(upserted))
}

pub(super) fn bson_usize(b: &Bson) -> Option<usize> {
    match b {
        Bson::Int32(v) => usize::try_from(*v).ok(),
        Bson::Int64(v) => usize::try_from(*v).ok(),
        Bson::Double(v) if *v >= 0.0 => Some(*v as usize),
        _ => None,
    }
}
