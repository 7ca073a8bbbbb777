//! The simulated Event Grid: routing what was published to every region at least once (late,
//! reordered, duplicated, mixed with bad events), deliveries and their answers, retries and
//! dead letters.

use rand::Rng;
use saldo_core::events::{DATA_VERSION, EventGridEvent, NODE_HEARTBEAT, RECORD_UPDATED};
use saldo_worker::Clock;
use saldo_worker::node::{Delivery, NodeError};
use serde_json::{Value, json};

use super::{Action, Job, Kind, Life, World};

impl World {
    /// A new event on the topic (published by the API, a node, or the simulation's bad actor).
    pub(super) fn push_event(&mut self, v: Value, kind: Kind) -> usize {
        self.events.push(v);
        self.kinds.push(kind);
        self.events.len() - 1
    }

    /// Moves published events from the topic to scheduled deliveries, Event Grid style.
    pub(super) fn route_published(&mut self) {
        let published: Vec<EventGridEvent<Value>> =
            std::mem::take(&mut *self.topic.0.lock().unwrap());
        for e in published {
            let kind = if e.event_type == RECORD_UPDATED {
                let i = self
                    .commands
                    .iter()
                    .position(|(tx, _)| *tx == e.id)
                    .expect("only the API publishes commands");
                Kind::Command(i)
            } else {
                Kind::Fleet
            };
            let id = self.push_event(serde_json::to_value(&e).unwrap(), kind);
            self.fan_out(id);
        }
    }

    /// A bad event, as a newer producer, a broken client or a stranger would send it.
    pub(super) fn bad_event(&mut self) -> usize {
        let n = self.events.len();
        let time = self.clock.now();
        let v = match self.rng.random_range(0..5) {
            // Another data version (an incompatible change from a newer API).
            0 => json!({
                "id": format!("v2-{n}"), "eventType": RECORD_UPDATED, "subject": "shop/orders",
                "eventTime": time, "dataVersion": "2.0",
                "data": {"transaction": format!("v2-{n}"), "lines": [{"sku": 1, "delta": -1}]}
            }),
            // An unknown event type.
            1 => json!({
                "id": format!("drain-{n}"), "eventType": "nodeDraining", "subject": "webapp/workers",
                "eventTime": time, "dataVersion": DATA_VERSION, "data": {}
            }),
            // A command with invalid data (no lines).
            2 => json!({
                "id": format!("empty-{n}"), "eventType": RECORD_UPDATED, "subject": "shop/orders",
                "eventTime": time, "dataVersion": DATA_VERSION,
                "data": {"transaction": format!("empty-{n}"), "products": []}
            }),
            // A heartbeat from a node outside the fleet.
            3 => json!({
                "id": format!("stranger-{n}"), "eventType": NODE_HEARTBEAT,
                "subject": "webapp/workers/stranger", "eventTime": time,
                "dataVersion": DATA_VERSION,
                "data": {"node": "stranger", "region": "stranger", "url": "sim://stranger",
                         "ready": true, "startedAt": time, "timestamp": time, "incarnation": 1}
            }),
            // Not an event at all.
            _ => json!({"hello": n}),
        };
        self.push_event(v, Kind::Bad)
    }

    pub(super) fn fan_out(&mut self, id: usize) {
        let now = self.now_ms();
        for to in 0..self.names.len() {
            if !self.healed && self.rng.random_bool(self.cfg.drop_p) {
                // Lost for this subscriber (dead-lettered on a bad day).
                self.dead_letter(to, &[id]);
                continue;
            }
            let copies = if self.rng.random_bool(self.cfg.dup_p) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let d = self.rng.random_range(0..=self.cfg.max_delay_ms);
                let mut events = vec![id];
                // Sometimes batch it with an earlier event (a redelivery inside a batch).
                if self.rng.random_bool(0.1) {
                    events.push(self.rng.random_range(0..self.events.len()));
                }
                // Sometimes with a bad event, before or after it.
                if self.rng.random_bool(self.cfg.bad_event_p) {
                    let bad = self.bad_event();
                    let at = self.rng.random_range(0..=events.len());
                    events.insert(at, bad);
                }
                self.at(
                    now + d,
                    Action::Deliver {
                        to,
                        events,
                        attempt: 1,
                    },
                );
            }
        }
        // Sometimes a delivery of nothing but a bad event: a 400, dead-lettered.
        if !self.healed && self.rng.random_bool(self.cfg.bad_event_p) {
            let bad = self.bad_event();
            let to = self.rng.random_range(0..self.names.len());
            self.at(
                now,
                Action::Deliver {
                    to,
                    events: vec![bad],
                    attempt: 1,
                },
            );
        }
    }

    pub(super) fn dead_letter(&mut self, to: usize, ids: &[usize]) {
        self.report.dead_lettered += 1;
        for id in ids {
            if let Kind::Command(i) = self.kinds[*id] {
                self.dead.entry(i).or_default().insert(to);
            }
        }
    }

    pub(super) fn retry_delivery(&mut self, to: usize, ids: Vec<usize>, attempt: u32) {
        if attempt >= 30 {
            self.dead_letter(to, &ids);
            return;
        }
        // Event Grid's schedule, compressed: 10 s, 30 s, 1 min, then every 2 min.
        let wait = match attempt {
            1 => 10_000,
            2 => 30_000,
            3 => 60_000,
            _ => 120_000,
        };
        let now = self.now_ms();
        self.at(
            now + wait,
            Action::Deliver {
                to,
                events: ids,
                attempt: attempt + 1,
            },
        );
    }

    pub(super) fn deliver(&mut self, to: usize, ids: Vec<usize>, attempt: u32) {
        self.report.deliveries += 1;
        // The quiet tail: commands stop arriving (their time to live ran out) so that the
        // fleet can converge before the checks; completions and heartbeats still flow.
        let quiet_from = self.cfg.active_ms + self.cfg.heal_ms - self.cfg.quiet_ms;
        if self.now_ms() >= quiet_from
            && ids
                .iter()
                .any(|id| matches!(self.kinds[*id], Kind::Command(_)))
        {
            self.dead_letter(to, &ids);
            return;
        }
        if self.life[to] == Life::Stopped {
            self.dead_letter(to, &ids); // 403: not retried
            return;
        }
        // The host's load balancer picks one of the region's HTTP instances that is up.
        let http = Self::http_count(&self.cfg);
        let up: Vec<usize> = (0..http).filter(|s| self.slots[to][*s].is_some()).collect();
        if up.is_empty() {
            self.retry_delivery(to, ids, attempt); // connection refused
            return;
        }
        let slot = up[self.rng.random_range(0..up.len())];
        let inst = self.slots[to][slot].as_ref().expect("slot is up");
        let (node, uid) = (inst.node.clone(), inst.uid);
        let body = Value::Array(ids.iter().map(|id| self.events[*id].clone()).collect());
        self.spawn(
            uid,
            Job::Delivery {
                to,
                events: ids,
                attempt,
            },
            Box::pin(async move { Some(node.handle_delivery(&body).await) }),
        );
    }

    /// A delivery was answered. A 2xx is checked on the spot: everything valid in it is in the
    /// region's ledger, everything bad in its quarantine.
    pub(super) fn delivered(
        &mut self,
        to: usize,
        ids: Vec<usize>,
        attempt: u32,
        result: Result<Delivery, NodeError>,
    ) -> Result<(), String> {
        let name = self.names[to].clone();
        let all_bad = ids.iter().all(|id| self.kinds[*id] == Kind::Bad);
        match result {
            Ok(_) => {
                self.report.acknowledged += 1;
                for id in &ids {
                    match self.kinds[*id] {
                        Kind::Command(i) => {
                            let tx = &self.commands[i].0;
                            if !self.db.has_entry(&name, tx) {
                                return Err(format!(
                                    "{name} answered 2xx for a delivery with {tx}, which is not in its ledger"
                                ));
                            }
                        }
                        Kind::Bad => {
                            let q = saldo_worker::intake::quarantined(
                                &self.events[*id],
                                String::new(),
                                self.clock.now(),
                            );
                            if !self.db.has_quarantined(&name, &q.id) {
                                return Err(format!(
                                    "{name} answered 2xx for a delivery with a bad event ({}) it did not quarantine",
                                    self.events[*id]
                                ));
                            }
                        }
                        Kind::Fleet => {}
                    }
                }
                Ok(())
            }
            Err(NodeError::Invalid(_)) if all_bad => {
                self.dead_letter(to, &ids); // 400: dead-lettered, never retried
                Ok(())
            }
            Err(NodeError::Invalid(m)) => Err(format!(
                "{name} refused (400) a delivery with valid events in it: {m}"
            )),
            Err(_) => {
                self.retry_delivery(to, ids, attempt);
                Ok(())
            }
        }
    }
}
