//! Executing a transaction against the warehouse (or adopting the outcome already there), and
//! recording outcomes in this node's ledger.

use chrono::{DateTime, Utc};
use saldo_core::events::Outcome;
use saldo_store::origin::{Origin, scope};
use saldo_store::{Command, OutcomeRecord, OutcomeToRecord, Recorded, Store, StoreError};
use tracing::Instrument;

use super::counters::inc;
use super::outbox::Completion;
use super::{Bus, Clock, Node, PeerClient};

/// What executing a transaction came to.
pub(super) struct Ran {
    pub(super) completion: Completion,
    /// Decided now (the marker is ours from this execution); false: adopted from a marker
    /// already there.
    pub(super) fresh: bool,
}

impl<S: Store, C: Clock, B: Bus, P: PeerClient> Node<S, C, B, P> {
    /// Records several outcomes in one store call (see [`Store::record_outcomes`]); each
    /// conflict is for the caller to report (with [`Node::conflicting`]), in its own span.
    pub(super) async fn record_all(
        &self,
        items: &[OutcomeToRecord],
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let found = self.store.record_outcomes(items, now).await?;
        assert_eq!(found.len(), items.len(), "one answer per outcome");
        Ok(found)
    }

    /// A known outcome disagrees with one heard: logged loudly and counted.
    pub(super) fn conflicting(&self, tx: &str, known: &OutcomeRecord, heard: &OutcomeRecord) {
        inc(&self.counters.conflicts, 1);
        tracing::error!(
            transaction = tx, known = ?known, heard = ?heard,
            "CONFLICTING OUTCOMES for one transaction: exactly-once is broken; keeping the first"
        );
    }

    /// Executes (or adopts) one transaction. The outcome is not recorded here:
    /// [`Node::settle`] publishes it (when the marker is ours) and then records it, for all of a
    /// delivery's or a sweep's executions in one ledger write. `takeover`: executing for
    /// another node (our rank is not 0, or its first in line was found down).
    pub(super) async fn execute_one(
        &self,
        tx: &str,
        command: &Command,
        rank: usize,
        takeover: bool,
    ) -> Result<Ran, StoreError> {
        let span = tracing::info_span!(
            "execute",
            otel.kind = "consumer",
            transaction = tx,
            node = %self.cfg.node,
            region = %self.cfg.region,
            rank
        );
        saldo_telemetry::set_parent_with_state(
            &span,
            command.traceparent.as_deref(),
            command.tracestate.as_deref(),
        );
        let result = async {
            let now = self.clock.now();
            let ex = scope(
                Origin::Execution,
                self.store.execute(tx, &command.products, &self.cfg.region, takeover, now),
            )
            .await?;
            if ex.fresh {
                inc(&self.counters.executed, 1);
                if ex.outcome.status == Outcome::Rejected {
                    inc(&self.counters.rejected, 1);
                }
                if takeover {
                    inc(&self.counters.taken_over, 1);
                }
                tracing::info!(status = ?ex.outcome.status, reason = ?ex.outcome.reason, "executed");
            } else {
                inc(&self.counters.adopted, 1);
            }
            let traceparent = saldo_telemetry::current_traceparent().or_else(|| command.traceparent.clone());
            Ok(Ran {
                completion: Completion {
                    transaction: tx.to_string(),
                    outcome: ex.outcome,
                    traceparent,
                    tracestate: command.tracestate.clone(),
                },
                fresh: ex.fresh,
            })
        }
        .instrument(span.clone())
        .await;
        if let Err(e) = &result {
            // Inside the execution's span, so the failure is an exception of this purchase's
            // trace (Application Insights), not a loose log line.
            span.in_scope(|| tracing::error!(error = %e, "execution failed"));
        }
        result
    }
}
