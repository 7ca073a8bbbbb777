//! Handling one Event Grid delivery: the envelope and the validation handshake, sorting its
//! events (taken or quarantined), recording commands, peers' outcomes and heartbeats, and
//! executing inline what this node owns.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use saldo_core::events::{Heartbeat, SaldoEvent, TransactionCompleted};
use saldo_store::origin::{Origin, scope};
use saldo_store::{
    Command, Inserted, NewCommand, OutcomeRecord, OutcomeToRecord, Recorded, Store, StoreError,
};
use serde_json::Value;

use super::counters::inc;
use super::liveness::peer_from_heartbeat;
use super::outbox::Completion;
use super::{
    Bus, Clock, MAX_EVENTS_PER_DELIVERY, MAX_INLINE_EXECUTIONS, Node, NodeError, PeerClient,
    SWEEP_SCAN,
};
use crate::intake;

/// The event types Event Grid itself sends to a webhook.
pub const SUBSCRIPTION_VALIDATION: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
pub const SUBSCRIPTION_DELETED: &str = "Microsoft.EventGrid.SubscriptionDeletedEvent";

/// What a successful delivery amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The subscription validation handshake: answer `{"validationResponse": code}`.
    Validation { code: String },
    Accepted {
        new_commands: usize,
        duplicates: usize,
        outcomes: usize,
        heartbeats: usize,
        executed: usize,
        /// Bad events of this delivery, now in the quarantine.
        quarantined: usize,
    },
}

/// The taken events of a delivery, by kind.
#[derive(Default)]
struct Taken {
    commands: Vec<NewCommand>,
    completions: Vec<TransactionCompleted>,
    heartbeats: Vec<Heartbeat>,
}

impl Taken {
    fn split(events: Vec<SaldoEvent>, now: DateTime<Utc>) -> Self {
        let mut taken = Taken::default();
        for e in events {
            match e {
                SaldoEvent::RecordUpdated(e) => taken.commands.push(NewCommand {
                    transaction: e.id,
                    command: Command {
                        products: e.data.products,
                        traceparent: e.data.traceparent,
                        tracestate: e.data.tracestate,
                    },
                    received_at: now,
                }),
                SaldoEvent::TransactionCompleted(e) => taken.completions.push(e.data),
                SaldoEvent::Heartbeat(e) => taken.heartbeats.push(e.data),
            }
        }
        taken
    }
}

impl<S: Store, C: Clock, B: Bus, P: PeerClient> Node<S, C, B, P> {
    /// Handles one Event Grid delivery (the JSON body). A malformed delivery (not an array of
    /// 1..=5000 events, a validation event not alone) is refused whole with nothing written.
    /// Otherwise its events are sorted ([`intake`]): the valid ones are taken, the bad ones
    /// quarantined durably before the delivery is acknowledged; a delivery with nothing valid
    /// in it is refused (400).
    pub async fn handle_delivery(&self, body: &Value) -> Result<Delivery, NodeError> {
        let items = self.envelope(body)?;
        if let Some(answer) = validation_handshake(items) {
            return answer;
        }
        // One bad event never takes good ones with it (see `intake`).
        let mut sorted = intake::sort(items, self.clock.now(), &self.admission);
        inc(&self.counters.invalid, sorted.bad.len());
        self.refuse_if_all_bad(&sorted).await?;
        let parsed = std::mem::take(&mut sorted.taken);
        if !self.is_ready() {
            return Err(NodeError::NotReady(
                "the ledger is not initialised yet".into(),
            ));
        }
        // The bad ones are durable before anything is acknowledged; if that fails, the whole
        // delivery is retried (503), and the valid ones are then recognised as duplicates.
        if !sorted.bad.is_empty() {
            self.store.quarantine(&sorted.bad).await?;
            tracing::warn!(quarantined = sorted.bad.len(), reason = %sorted.summary(), "quarantined bad events; taking the rest of the delivery");
        }
        let now = self.clock.now();
        let taken = Taken::split(parsed, now);
        // Outcomes in this delivery: nothing to execute for those.
        let decided: BTreeSet<String> = taken
            .completions
            .iter()
            .map(|c| c.transaction.clone())
            .collect();
        // 1. Heartbeats: liveness on *our* clock, which the ranking below reads.
        for h in &taken.heartbeats {
            scope(
                Origin::Heartbeat,
                self.remember_peer(peer_from_heartbeat(h, now)),
            )
            .await?;
        }
        // 2. What this node owns, executed before it is recorded (`execute_owned`).
        let (fresh, adopted) = self.execute_owned(&taken.commands, &decided, now).await?;
        // 3. The commands and the outcomes of what we executed: ONE ledger write, durable
        //    before we acknowledge. Completions decided now are published first, as `settle`
        //    does; one adopted from our own marker (a redelivery after we died before this
        //    write) is owed until the write says our ledger did not know it.
        let (published, failure) = self.publish_owed(&fresh).await;
        if let Some(e) = failure {
            // Recorded unpublished below: the outbox publishes them.
            tracing::warn!(error = %e, "publishing completions failed; the outbox will retry");
        }
        let items: Vec<OutcomeToRecord> = fresh
            .iter()
            .map(|c| (c, published.contains(&c.transaction)))
            .chain(adopted.iter().map(|c| (c, c.outcome.node != self.cfg.node)))
            .map(|(c, published)| OutcomeToRecord {
                transaction: c.transaction.clone(),
                outcome: c.outcome.clone(),
                published,
            })
            .collect();
        let (inserted, recorded) = match scope(
            Origin::Command,
            self.store.write_entries(&taken.commands, &items, now),
        )
        .await
        {
            Ok(written) => written,
            Err(e) => {
                // Executed (and maybe told the fleet), not recorded: the redelivery adopts.
                inc(&self.counters.published_unrecorded, published.len());
                return Err(e.into());
            }
        };
        for (item, r) in items.iter().zip(&recorded) {
            if let Recorded::Conflict(known) = r {
                self.conflicting(&item.transaction, known, &item.outcome);
            }
        }
        let ran: BTreeSet<&str> = fresh
            .iter()
            .chain(&adopted)
            .map(|c| c.transaction.as_str())
            .collect();
        self.count_commands(&taken.commands, &inserted, &ran, now);
        // 4. Peers' outcomes.
        let (outcomes, _) = scope(
            Origin::PeerOutcome,
            self.record_completions(&taken.completions, now),
        )
        .await?;
        // 5. Acknowledged from here on. Our own adopted outcomes that our ledger learnt now
        //    are owed: published and marked (else the outbox publishes them).
        let owed: Vec<Completion> = adopted
            .into_iter()
            .zip(&recorded[fresh.len()..])
            .filter(|(c, r)| **r == Recorded::New && c.outcome.node == self.cfg.node)
            .map(|(c, _)| c)
            .collect();
        // Decided here now: executed, or adopted into our ledger (a redelivery of what we
        // recorded already is neither).
        let executed = fresh.len() + owed.len();
        if let Err(e) = self.publish_completions(owed).await {
            tracing::warn!(error = %e, "publishing adopted completions failed; the outbox will retry");
        }
        Ok(Delivery::Accepted {
            new_commands: inserted.iter().filter(|r| **r == Inserted::New).count(),
            duplicates: inserted
                .iter()
                .filter(|r| **r == Inserted::Duplicate)
                .count(),
            outcomes,
            heartbeats: taken.heartbeats.len(),
            executed,
            quarantined: sorted.bad.len(),
        })
    }

    /// The delivery's events, if it is a JSON array of 1..=5000 of them.
    fn envelope<'a>(&self, body: &'a Value) -> Result<&'a [Value], NodeError> {
        let Some(items) = body.as_array() else {
            inc(&self.counters.invalid, 1);
            return Err(NodeError::Invalid(
                "a delivery is a JSON array of events".into(),
            ));
        };
        if items.is_empty() || items.len() > MAX_EVENTS_PER_DELIVERY {
            inc(&self.counters.invalid, 1);
            return Err(NodeError::Invalid(format!(
                "a delivery has 1..={MAX_EVENTS_PER_DELIVERY} events"
            )));
        }
        Ok(items)
    }

    /// A delivery with bad events and nothing that can be taken is refused.
    async fn refuse_if_all_bad(&self, sorted: &intake::Intake) -> Result<(), NodeError> {
        if sorted.taken.is_empty() && !sorted.bad.is_empty() {
            // Nothing here can ever be taken: 400, so Event Grid dead-letters it. Quarantined
            // as well when the database can be reached (the dead letter keeps it otherwise).
            let why = sorted.summary();
            if self.is_ready()
                && let Err(e) = self.store.quarantine(&sorted.bad).await
            {
                tracing::warn!(error = %e, "could not quarantine an all-bad delivery; Event Grid dead-letters it");
            }
            return Err(NodeError::Invalid(why));
        }
        Ok(())
    }

    /// Counts the inserted commands and notes the new ones not `executed` (decided in the same
    /// write) as pending since `now`.
    fn count_commands(
        &self,
        commands: &[NewCommand],
        inserted: &[Inserted],
        executed: &BTreeSet<&str>,
        now: DateTime<Utc>,
    ) {
        let new: Vec<&NewCommand> = commands
            .iter()
            .zip(inserted)
            .filter(|(_, r)| **r == Inserted::New)
            .map(|(c, _)| c)
            .collect();
        inc(&self.counters.received, new.len());
        {
            let mut seen = self.pending_seen.lock().expect("pending lock");
            let undecided = new
                .iter()
                .filter(|c| !executed.contains(c.transaction.as_str()));
            for c in undecided.take(SWEEP_SCAN.saturating_sub(seen.len())) {
                seen.insert(c.transaction.clone(), now);
            }
        }
        inc(&self.counters.duplicates, commands.len() - new.len());
        // One span per command, a child of the API's request (trace context from
        // `data.traceparent`), so that each region's receipt shows in the purchase's trace.
        for (c, r) in commands.iter().zip(inserted) {
            let span = tracing::info_span!(
                "recordUpdated",
                otel.kind = "consumer",
                transaction = %c.transaction,
                node = %self.cfg.node,
                region = %self.cfg.region,
                duplicate = *r == Inserted::Duplicate,
            );
            saldo_telemetry::set_parent_with_state(
                &span,
                c.command.traceparent.as_deref(),
                c.command.tracestate.as_deref(),
            );
            span.in_scope(|| tracing::info!("command recorded"));
        }
    }

    /// Records peers' outcomes, all of the delivery's in one store call (one ledger transaction
    /// in MongoDB). Our own come back to us too (one topic): they are in our ledger already,
    /// because the outbox records before it publishes, so they are skipped. Returns how many
    /// were new to us, and every transaction the delivery decided.
    async fn record_completions(
        &self,
        completions: &[TransactionCompleted],
        now: DateTime<Utc>,
    ) -> Result<(usize, BTreeSet<String>), NodeError> {
        let decided = completions.iter().map(|c| c.transaction.clone()).collect();
        let peers: Vec<&TransactionCompleted> = completions
            .iter()
            .filter(|c| c.node != self.cfg.node)
            .collect();
        let items: Vec<OutcomeToRecord> = peers
            .iter()
            .map(|c| OutcomeToRecord {
                transaction: c.transaction.clone(),
                outcome: OutcomeRecord {
                    status: c.status,
                    node: c.node.clone(),
                    region: c.region.clone(),
                    reason: c.reason.clone(),
                    quantities: c.products.clone(),
                    at: c.timestamp,
                    takeover: c.takeover,
                },
                published: true,
            })
            .collect();
        let found = self.record_all(&items, now).await?;
        let mut outcomes = 0;
        for ((c, item), recorded) in peers.iter().zip(&items).zip(found) {
            // The peer's record of the outcome joins the purchase's trace too.
            let span = tracing::info_span!(
                "transactionCompleted",
                otel.kind = "consumer",
                transaction = %c.transaction,
                node = %self.cfg.node,
                region = %self.cfg.region,
                executor = %c.node,
            );
            saldo_telemetry::set_parent_with_state(
                &span,
                c.traceparent.as_deref(),
                c.tracestate.as_deref(),
            );
            let _in = span.enter();
            match recorded {
                Recorded::New => {
                    tracing::info!(status = ?c.status, "peer's outcome recorded");
                    outcomes += 1;
                }
                Recorded::Same => {}
                Recorded::Conflict(known) => {
                    self.conflicting(&item.transaction, &known, &item.outcome)
                }
            }
        }
        Ok((outcomes, decided))
    }

    /// Which of `commands` this node executes now: the undecided ones (not in `decided`) it
    /// owns at rank 0 among the live nodes, after asking the nodes ranked above it whether they
    /// are up (`probe`), at most [`MAX_INLINE_EXECUTIONS`]; each with whether it is a takeover
    /// (ours only because its first in line was found down).
    async fn owned<'a>(
        &self,
        commands: &[&'a NewCommand],
        decided: &BTreeSet<String>,
        now: DateTime<Utc>,
    ) -> Vec<(&'a NewCommand, bool)> {
        let undecided: Vec<&NewCommand> = commands
            .iter()
            .copied()
            .filter(|c| !decided.contains(&c.transaction))
            .collect();
        // (The region's peer records are read only when there is something to rank.)
        if undecided.is_empty() {
            return Vec::new();
        }
        let mut live = self.live_peers(now).await;
        // Fast takeover: the nodes ranked above us for these commands may be down (`probe`).
        let ids = undecided.iter().map(|c| c.transaction.as_str());
        if self.probe_above(ids, &live, now, true).await {
            live = self.live_peers(now).await;
        }
        let down = self.down_peers();
        undecided
            .into_iter()
            .filter(|c| self.rank(&c.transaction, &live) == 0)
            .take(MAX_INLINE_EXECUTIONS)
            .map(|c| (c, self.owner_is_down(&c.transaction, &live, &down)))
            .collect()
    }

    /// Executes what this node owns of a delivery's commands BEFORE recording them; the
    /// delivery then records each command with its outcome in one ledger write. Returns the
    /// executions that decided now (their markers are ours) and the outcomes adopted from a
    /// marker already there. A failure is logged and counted: the command is recorded pending
    /// and the sweep executes it; an unavailable database fails the delivery at once (503).
    ///
    /// Recording first cost the executor two ledger writes per purchase (the command, then
    /// the outcome), the first on the path from 202 to completed. Executing first is safe:
    /// - the marker is the safety (invariant 2): whatever executes a second time adopts;
    /// - the delivery is acknowledged only after the ledger write, so if this process dies
    ///   between the marker's commit and that write, Event Grid delivers again, and the
    ///   redelivery adopts the marker, records it and publishes it (same event id);
    /// - a next in line that asks us about the transaction meanwhile (`Probe::Lacks`) may take
    ///   it over at once: one of the two attempts then adopts, as when our delivery arrives
    ///   just after it asked.
    async fn execute_owned(
        &self,
        commands: &[NewCommand],
        decided: &BTreeSet<String>,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Completion>, Vec<Completion>), NodeError> {
        let all: Vec<&NewCommand> = commands.iter().collect();
        let mut fresh = Vec::new();
        let mut adopted = Vec::new();
        for (c, takeover) in self.owned(&all, decided, now).await {
            match self
                .execute_one(&c.transaction, &c.command, 0, takeover)
                .await
            {
                Ok(done) if done.fresh => fresh.push(done.completion),
                Ok(done) => adopted.push(done.completion),
                Err(e @ StoreError::Unavailable(_)) => {
                    // The ledger write would wait out the same outage: 503 now, and Event
                    // Grid delivers again (what executed meanwhile is then adopted).
                    inc(&self.counters.inline_failed, 1);
                    return Err(NodeError::Store(e));
                }
                Err(e) => {
                    inc(&self.counters.inline_failed, 1);
                    tracing::warn!(transaction = %c.transaction, error = %e, "inline execution failed; the sweep will retry")
                }
            }
        }
        Ok((fresh, adopted))
    }

    /// Executes what this node owns at rank 0 among commands just inserted (a catch-up page's;
    /// see [`Node::owned`]) and publishes the completions. The page that inserted them is done
    /// already: a failure here is not its failure (the sweep retries). Returns how many ran.
    pub(super) async fn execute_inline(
        &self,
        new: Vec<&NewCommand>,
        decided: &BTreeSet<String>,
        now: DateTime<Utc>,
    ) -> usize {
        let mut done = Vec::new();
        for (c, takeover) in self.owned(&new, decided, now).await {
            match self
                .execute_one(&c.transaction, &c.command, 0, takeover)
                .await
            {
                Ok(ran) => done.push(ran.completion),
                Err(e) => {
                    // Possibly after its commit (a timeout, a conflict recording the outcome):
                    // the sweep then adopts our own marker.
                    inc(&self.counters.inline_failed, 1);
                    tracing::warn!(transaction = %c.transaction, error = %e, "inline execution failed; the sweep will retry")
                }
            }
        }
        let executed = done.len();
        if let Err(e) = self.settle(done).await {
            tracing::warn!(error = %e, "publishing or recording completions failed; the sweep will retry");
        }
        executed
    }
}

/// The validation handshake (Event Grid schema), if the delivery holds one: it must come alone
/// and carry `data.validationCode`.
fn validation_handshake(items: &[Value]) -> Option<Result<Delivery, NodeError>> {
    let v = items
        .iter()
        .find(|e| e.get("eventType").and_then(Value::as_str) == Some(SUBSCRIPTION_VALIDATION))?;
    let code = v.pointer("/data/validationCode").and_then(Value::as_str);
    Some(match (items.len(), code) {
        (1, Some(code)) if !code.is_empty() => Ok(Delivery::Validation {
            code: code.to_string(),
        }),
        _ => Err(NodeError::Invalid(
            "a validation event comes alone and carries data.validationCode".into(),
        )),
    })
}
