//! The outbox's publishing side: the `transactionCompleted` events this node owes the fleet,
//! published in batches and then recorded (or marked) published in the ledger.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use saldo_core::events::{
    DATA_VERSION, EventGridEvent, TRANSACTION_COMPLETED, TransactionCompleted,
};
use saldo_store::origin::{Origin, scope};
use saldo_store::{LedgerEntry, OutcomeRecord, OutcomeToRecord, Recorded, Store};
use serde_json::Value;

use super::counters::inc;
use super::{Bus, Clock, Node, NodeError, OUTBOX_BATCH, PeerClient};

/// Subjects of the events the workers publish.
pub const COMPLETION_SUBJECT: &str = "webapp/workers/transactions";

/// A completion this node owes the fleet: an outcome whose marker is its own, with the trace
/// context of the command it completes.
pub(super) struct Completion {
    pub(super) transaction: String,
    pub(super) outcome: OutcomeRecord,
    pub(super) traceparent: Option<String>,
    pub(super) tracestate: Option<String>,
}

/// The deterministic id of a transaction's completion event: republishing the same outcome
/// (outbox retries, a restarted executor adopting its own marker) yields the same event id, so
/// any consumer that dedupes by event id sees it once. One transaction has one outcome (the
/// warehouse marker), so the transaction id alone determines it.
pub fn completion_event_id(transaction: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("saldo:transactionCompleted:{transaction}").as_bytes(),
    )
    .to_string()
}

/// Builds the `transactionCompleted` event for an outcome this node executed.
pub fn completion_event(
    transaction: &str,
    outcome: &OutcomeRecord,
    traceparent: Option<String>,
    tracestate: Option<String>,
    now: DateTime<Utc>,
) -> EventGridEvent<Value> {
    let data = TransactionCompleted {
        transaction: transaction.to_string(),
        status: outcome.status,
        timestamp: outcome.at,
        node: outcome.node.clone(),
        region: outcome.region.clone(),
        reason: outcome.reason.clone(),
        products: outcome.quantities.clone(),
        takeover: outcome.takeover,
        traceparent,
        tracestate,
    };
    EventGridEvent {
        id: completion_event_id(transaction),
        event_type: TRANSACTION_COMPLETED.to_string(),
        subject: COMPLETION_SUBJECT.to_string(),
        event_time: now,
        data: serde_json::to_value(data).expect("completion serialises"),
        data_version: DATA_VERSION.to_string(),
        metadata_version: None,
        topic: None,
    }
}

/// The completions still owed among the ledger's unpublished entries (those with an outcome).
pub(super) fn owed_completions(unpublished: Vec<LedgerEntry>) -> Vec<Completion> {
    unpublished
        .into_iter()
        .filter_map(|e| {
            let outcome = e.outcome?;
            let (traceparent, tracestate) = e
                .command
                .map(|c| (c.traceparent, c.tracestate))
                .unwrap_or_default();
            Some(Completion {
                transaction: e.transaction,
                outcome,
                traceparent,
                tracestate,
            })
        })
        .collect()
}

impl<S: Store, C: Clock, B: Bus, P: PeerClient> Node<S, C, B, P> {
    /// What executions came to, for all of a delivery's or a sweep's at once: publishes the
    /// completions this node owes (the markers that are its own) in batches, then records every
    /// outcome in ONE ledger write, marked published as the topic answered.
    ///
    /// Publishing first saves the outbox flag's second write and tells the fleet sooner. The
    /// warehouse marker is the record meanwhile: if the ledger write fails, or the process dies
    /// before it, the entry stays pending and the sweep adopts the marker and publishes again
    /// under the same event id, which the peers recognise (ARCHITECTURE.md, invariant 5).
    /// Without it, a region whose own ledger is held (a stopped writer, contention) would not
    /// tell the fleet until a sweep had recorded the outcome.
    pub(super) async fn settle(&self, done: Vec<Completion>) -> Result<(), NodeError> {
        if done.is_empty() {
            return Ok(());
        }
        let (published, failure) = self.publish_owed(&done).await;
        let now = self.clock.now();
        let items: Vec<OutcomeToRecord> = done
            .into_iter()
            .map(|c| OutcomeToRecord {
                published: c.outcome.node != self.cfg.node || published.contains(&c.transaction),
                transaction: c.transaction,
                outcome: c.outcome,
            })
            .collect();
        let found = match scope(Origin::OwnOutcome, self.record_all(&items, now)).await {
            Ok(found) => found,
            Err(e) => {
                // Told the fleet, not our ledger: the sweep records it (see above).
                inc(&self.counters.published_unrecorded, published.len());
                return Err(e.into());
            }
        };
        for (item, recorded) in items.iter().zip(found) {
            if let Recorded::Conflict(known) = recorded {
                self.conflicting(&item.transaction, &known, &item.outcome);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Publishes, in batches, the completions of `done` this node owes (the markers that are
    /// its own). Returns the transactions the topic took, and the failure that stopped the
    /// rest (which are then recorded unpublished, for the outbox).
    pub(super) async fn publish_owed(
        &self,
        done: &[Completion],
    ) -> (BTreeSet<String>, Option<NodeError>) {
        let now = self.clock.now();
        let ours: Vec<&Completion> = done
            .iter()
            .filter(|c| c.outcome.node == self.cfg.node)
            .collect();
        let mut published = BTreeSet::new();
        for chunk in ours.chunks(OUTBOX_BATCH) {
            let events = chunk.iter().map(|c| self.event(c, now)).collect();
            match self.bus.publish(events).await {
                Ok(()) => published.extend(chunk.iter().map(|c| c.transaction.clone())),
                Err(e) => return (published, Some(NodeError::Publish(e))),
            }
        }
        (published, None)
    }

    /// The `transactionCompleted` event of a completion we owe.
    fn event(&self, c: &Completion, now: DateTime<Utc>) -> EventGridEvent<Value> {
        completion_event(
            &c.transaction,
            &c.outcome,
            c.traceparent.clone(),
            c.tracestate.clone(),
            now,
        )
    }

    /// Publishes completions in one batch, then marks them published.
    pub(super) async fn publish_completions(
        &self,
        items: Vec<Completion>,
    ) -> Result<usize, NodeError> {
        if items.is_empty() {
            return Ok(0);
        }
        let now = self.clock.now();
        let mut n = 0;
        for chunk in items.chunks(OUTBOX_BATCH) {
            let events = chunk.iter().map(|c| self.event(c, now)).collect();
            self.bus.publish(events).await.map_err(NodeError::Publish)?;
            let txs: Vec<String> = chunk.iter().map(|c| c.transaction.clone()).collect();
            scope(Origin::OwnOutcome, self.store.mark_published(&txs)).await?;
            n += chunk.len();
        }
        Ok(n)
    }
}
