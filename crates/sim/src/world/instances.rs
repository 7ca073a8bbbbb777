//! A region's instances: making a node, booting, crashing, stopping, and what the network
//! reaches of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Duration;
use rand::Rng;
use saldo_worker::{Config, Node};

use super::{Instance, Job, Life, World, url};
use crate::adapters::{Endpoint, SimBus, SimClock, SimNode, SimPeers};

impl World {
    pub(super) fn make_node(&mut self, i: usize, slot: usize) -> Arc<SimNode> {
        let skew = self.cfg.clock_skew_ms;
        let offset = if skew > 0 {
            self.rng.random_range(-skew..=skew)
        } else {
            0
        };
        if self.offsets[i][slot].is_some_and(|before| offset < before) {
            self.report.clock_jumps_back += 1;
        }
        self.offsets[i][slot] = Some(offset);
        let offset = Duration::milliseconds(offset);
        let name = self.names[i].clone();
        let cfg = Config {
            node: name.clone(),
            region: name.clone(),
            public_url: url(&name),
            peers: self
                .names
                .iter()
                .filter(|n| **n != name)
                .map(|n| url(n))
                .collect(),
            takeover: Duration::milliseconds(self.cfg.takeover_ms),
            liveness: Duration::milliseconds(self.cfg.liveness_ms),
            peers_cache: Duration::milliseconds(self.cfg.peers_cache_ms),
            catch_up_every: self.cfg.catch_up_every,
        };
        // The fleet's names are configured (`SALDO_FLEET`): an event from any other node is
        // refused into the quarantine.
        let admission = saldo_worker::intake::Admission {
            fleet: Some(self.names.iter().cloned().collect()),
            ..Default::default()
        };
        Arc::new(
            Node::new(
                cfg,
                self.db.store(&name),
                SimClock {
                    base: self.clock.clone(),
                    offset,
                },
                SimBus {
                    topic: self.topic.clone(),
                    faults: self.faults.clone(),
                },
                SimPeers {
                    dir: self.dir.clone(),
                    faults: self.faults.clone(),
                    reader: name,
                    log: self.log.clone(),
                    cut_p: self.cfg.feed_cut_p,
                },
            )
            .with_admission(admission),
        )
    }

    /// The network's view of region `i`: its HTTP instances that are up.
    pub(super) fn publish_endpoints(&mut self, i: usize) {
        let http = Self::http_count(&self.cfg);
        let up: Vec<Endpoint> = self.slots[i][..http]
            .iter()
            .flatten()
            .map(|inst| Endpoint {
                node: inst.node.clone(),
                alive: inst.alive.clone(),
            })
            .collect();
        let mut dir = self.dir.0.lock().unwrap();
        if up.is_empty() || self.life[i] != Life::Up {
            dir.remove(&url(&self.names[i]));
        } else {
            dir.insert(url(&self.names[i]), up);
        }
    }

    /// A process dies: its memory and whatever handler it was running are lost.
    pub(super) fn kill(&mut self, i: usize, slot: usize) {
        let Some(old) = self.slots[i][slot].take() else {
            return;
        };
        old.alive.store(false, Ordering::Relaxed);
        self.dead_counters.push(old.node.counters_snapshot());
        let lost: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.instance == old.uid)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let t = self.tasks.remove(&id).expect("task");
            if let Job::Delivery {
                to,
                events,
                attempt,
            } = t.job
            {
                // The connection broke: Event Grid retries the delivery.
                self.retry_delivery(to, events, attempt);
            }
        }
        self.publish_endpoints(i);
    }

    /// Starts (or restarts) instance `slot` of region `i`: a fresh process over the same
    /// ledger, with a clock of its own. It serves at once (answering 503 until started).
    pub(super) fn boot(&mut self, i: usize, slot: usize) {
        self.kill(i, slot);
        let node = self.make_node(i, slot);
        self.next_uid += 1;
        let uid = self.next_uid;
        self.slots[i][slot] = Some(Instance {
            uid,
            node: node.clone(),
            alive: Arc::new(AtomicBool::new(true)),
        });
        self.publish_endpoints(i);
        // Start-up may fail (database down or a fault); the first sweep retries it. As the
        // worker does, no catch-up here: the timer instance's first sweep catches up.
        self.spawn(
            uid,
            Job::Start,
            Box::pin(async move {
                let _ = node.start().await;
                None
            }),
        );
    }

    /// The region's host crashes (every instance), or the region is stopped (403s).
    pub(super) fn take_down(&mut self, i: usize, stop: bool) {
        self.report.crashes += 1;
        for slot in 0..self.slots[i].len() {
            self.kill(i, slot);
        }
        if stop {
            self.life[i] = Life::Stopped;
        }
    }

    pub(super) fn boot_region(&mut self, i: usize) {
        self.life[i] = Life::Up;
        for slot in 0..self.slots[i].len() {
            if self.slots[i][slot].is_none() {
                self.boot(i, slot);
            }
        }
    }
}
