//! Handling one Event Grid delivery: the envelope and the validation handshake, sorting its
//! events (taken or quarantined), recording commands, peers' outcomes and heartbeats, and
//! executing inline what this node owns.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use saldo_core::events::{Heartbeat, SaldoEvent, TransactionCompleted};
use saldo_store::origin::{Origin, scope};
use saldo_store::{Command, Inserted, NewCommand, OutcomeRecord, OutcomeToRecord, Recorded, Store};
use serde_json::Value;

use super::counters::inc;
use super::liveness::peer_from_heartbeat;
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
        // 1. Commands: one batch insert; durable before we acknowledge.
        let inserted = scope(Origin::Command, self.store.insert_commands(&taken.commands)).await?;
        let new = self.count_commands(&taken.commands, &inserted, now);
        // 2. Peers' outcomes.
        let (outcomes, decided) = scope(
            Origin::PeerOutcome,
            self.record_completions(&taken.completions, now),
        )
        .await?;
        // 3. Heartbeats: liveness on *our* clock.
        for h in &taken.heartbeats {
            scope(
                Origin::Heartbeat,
                self.remember_peer(peer_from_heartbeat(h, now)),
            )
            .await?;
        }
        // 4. Acknowledged from here on.
        let executed = self.execute_inline(new, &decided, now).await;
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

    /// Counts the inserted commands and notes the new ones as pending since `now`; returns the
    /// new ones.
    fn count_commands<'a>(
        &self,
        commands: &'a [NewCommand],
        inserted: &[Inserted],
        now: DateTime<Utc>,
    ) -> Vec<&'a NewCommand> {
        let new: Vec<&NewCommand> = commands
            .iter()
            .zip(inserted)
            .filter(|(_, r)| **r == Inserted::New)
            .map(|(c, _)| c)
            .collect();
        inc(&self.counters.received, new.len());
        {
            let mut seen = self.pending_seen.lock().expect("pending lock");
            for c in new.iter().take(SWEEP_SCAN.saturating_sub(seen.len())) {
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
        new
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

    /// Executes what this node owns at rank 0 among the new, undecided commands (at most
    /// [`MAX_INLINE_EXECUTIONS`]) and publishes the completions. The delivery (or catch-up
    /// page) that inserted them is done already: a failure here is not its failure (the sweep
    /// retries). Returns how many ran.
    pub(super) async fn execute_inline(
        &self,
        new: Vec<&NewCommand>,
        decided: &BTreeSet<String>,
        now: DateTime<Utc>,
    ) -> usize {
        // (The region's peer records are read only when there is something to rank.)
        if new.is_empty() {
            return 0;
        }
        let mut live = self.live_peers(now).await;
        // Fast takeover: the nodes ranked above us for these commands may be down (`probe`).
        let undecided = new
            .iter()
            .filter(|c| !decided.contains(&c.transaction))
            .map(|c| c.transaction.as_str());
        if self.probe_above(undecided, &live, now, true).await {
            live = self.live_peers(now).await;
        }
        let down = self.down_peers();
        let mine: Vec<&NewCommand> = new
            .into_iter()
            .filter(|c| !decided.contains(&c.transaction) && self.rank(&c.transaction, &live) == 0)
            .take(MAX_INLINE_EXECUTIONS)
            .collect();
        let mut done = Vec::new();
        for c in mine {
            // Ours only because its first in line was found down: a takeover.
            let takeover = self.owner_is_down(&c.transaction, &live, &down);
            match self
                .execute_one(&c.transaction, &c.command, 0, takeover)
                .await
            {
                Ok(completion) => done.push(completion),
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
