//! The periodic sweep: take over overdue transactions, re-publish the outbox, and catch up.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use saldo_core::ledger::sweep_turn_at;
use saldo_store::origin::{Origin, scope};
use saldo_store::{LedgerEntry, Store, StoreError};

use super::counters::inc;
use super::outbox::{Completion, owed_completions};
use super::{Bus, Clock, Node, NodeError, OUTBOX_BATCH, PeerClient, SWEEP_EXECUTIONS, SWEEP_SCAN};

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub executed: usize,
    pub republished: usize,
    pub repairs: Option<usize>,
}

/// What the takeover step of a sweep left to do: the completions it owes, and the first
/// failure it met (an outage stops it; anything else only skips a transaction).
struct Takeover {
    executed: usize,
    done: Vec<Completion>,
    first_error: Option<StoreError>,
}

impl<S: Store, C: Clock, B: Bus, P: PeerClient> Node<S, C, B, P> {
    /// The periodic work: take over overdue transactions, re-publish the outbox, and catch up
    /// with peers every `catch_up_every` sweeps (the first sweep included).
    pub async fn sweep(&self) -> Result<SweepReport, NodeError> {
        if !self.is_ready() {
            self.start().await?;
        }
        let round = self.sweeps.fetch_add(1, Ordering::Relaxed);
        let mut report = SweepReport::default();
        // 1. Takeover (and retry of failed inline executions).
        let takeover = self.take_over().await?;
        inc(&self.counters.sweeps, 1);
        report.executed = takeover.executed;
        if let Some(e @ StoreError::Unavailable(_)) = &takeover.first_error {
            // Publish what did execute; the outage fails this sweep.
            if let Err(p) = self.settle(takeover.done).await {
                tracing::warn!(error = %p, "publishing completions failed; the outbox retries");
            }
            return Err(e.clone().into());
        }
        // A topic outage must not stop the outbox check or catch-up (which talks to peers,
        // not to the topic): remember the first failure and report it at the end.
        let mut failure: Option<NodeError> = takeover.first_error.map(NodeError::from);
        if let Err(e) = self.settle(takeover.done).await {
            failure.get_or_insert(e);
        }
        // 2. The outbox: whatever is still unpublished (a publish that failed before, or a
        //    recorded while the topic was down).
        let unpublished = scope(Origin::Sweep, self.store.unpublished(OUTBOX_BATCH)).await?;
        match self
            .publish_completions(owed_completions(unpublished))
            .await
        {
            Ok(n) => {
                inc(&self.counters.publish_retries, n);
                report.republished = n;
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
        // 3. Catch-up.
        if round.is_multiple_of(self.cfg.catch_up_every) {
            report.repairs = Some(self.catch_up().await?);
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(report)
    }

    /// Executes the pending transactions whose turn has come for this node (at most
    /// [`SWEEP_EXECUTIONS`]), their deadlines counted from when this instance first saw them.
    async fn take_over(&self) -> Result<Takeover, StoreError> {
        let now = self.clock.now();
        let mut live = self.live_peers(now).await;
        let mut done = Takeover {
            executed: 0,
            done: Vec::new(),
            first_error: None,
        };
        let pending = scope(Origin::Sweep, self.store.pending(SWEEP_SCAN)).await?;
        let seen_at = self.note_pending(&pending, now);
        // Fast takeover: ask the nodes ranked above us for what has waited a tenth of its
        // deadline and is not yet ours (`probe`).
        let waiting = pending.iter().filter(|e| {
            let seen = seen_at[&e.transaction];
            let rank = self.rank(&e.transaction, &live);
            e.command.is_some()
                && rank > 0
                && now >= seen + self.probe_after()
                && now < sweep_turn_at(seen, rank, self.cfg.takeover)
        });
        let waiting: Vec<&str> = waiting.map(|e| e.transaction.as_str()).collect();
        if self
            .probe_above(waiting.iter().copied(), &live, now, false)
            .await
        {
            live = self.live_peers(now).await;
        }
        // An owner that is up may still never have heard of it (held back by probation).
        let (lacking, found_down) = self.lacking(waiting, &live, now).await;
        if found_down {
            live = self.live_peers(now).await;
        }
        let down = self.down_peers();
        for e in pending {
            if done.executed >= SWEEP_EXECUTIONS {
                break;
            }
            let Some(command) = &e.command else { continue };
            let rank = self.rank(&e.transaction, &live);
            let seen = seen_at[&e.transaction];
            // Ours because its first in line was found down: no instance of ours is executing
            // it inline (it was not ours when it came), so it is due at once.
            let owner_down = rank == 0 && self.owner_is_down(&e.transaction, &live, &down);
            // Next in line, and its first in line answered that it does not hold it.
            let owner_lacks = rank == 1 && lacking.contains(&e.transaction);
            let turn = if owner_down || owner_lacks {
                seen
            } else {
                sweep_turn_at(seen, rank, self.cfg.takeover)
            };
            if now < turn {
                continue;
            }
            let takeover = rank > 0 || owner_down;
            match self
                .execute_one(&e.transaction, command, rank, takeover)
                .await
            {
                Ok(ran) => {
                    done.executed += 1;
                    done.done.push(ran.completion);
                }
                Err(err @ StoreError::Contended(_)) => {
                    // Contention is not an outage: this transaction's documents are hot (its
                    // products, or our ledger's counter). Go on with the others; the next sweep
                    // tries this one again.
                    inc(&self.counters.contended, 1);
                    tracing::info!(transaction = %e.transaction, error = %err, "sweep execution contended; next sweep retries it");
                }
                Err(err @ StoreError::Unavailable(_)) => {
                    // Stop at the first outage: with the database down every further attempt
                    // would wait out its own timeout.
                    tracing::warn!(transaction = %e.transaction, error = %err, "sweep execution failed");
                    done.first_error = Some(err);
                    break;
                }
                Err(err) => {
                    // Anything else is specific to this transaction (a bug, corrupt data): skip
                    // it so that one poisoned entry cannot stall the takeover of all others,
                    // the outbox and catch-up; the sweep reports the failure at the end.
                    tracing::error!(transaction = %e.transaction, error = %err, "sweep execution failed; skipped");
                    done.first_error.get_or_insert(err);
                }
            }
        }
        Ok(done)
    }

    /// When this instance first saw each pending transaction (now, for those new to it); the
    /// ones no longer pending are forgotten.
    fn note_pending(
        &self,
        pending: &[LedgerEntry],
        now: DateTime<Utc>,
    ) -> BTreeMap<String, DateTime<Utc>> {
        let mut seen = self.pending_seen.lock().expect("pending lock");
        let mut next = BTreeMap::new();
        for e in pending {
            let at = seen.get(&e.transaction).copied().unwrap_or(now);
            next.insert(e.transaction.clone(), at);
        }
        *seen = next.clone();
        next
    }
}
