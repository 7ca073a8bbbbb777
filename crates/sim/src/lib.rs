//! A deterministic simulation of the worker fleet.
//!
//! The nodes are the real [`saldo_worker::Node`]s (the very code the HTTP handlers call) over
//! one shared [`MemDb`], a [`ManualClock`], a simulated Event Grid topic and a simulated peer
//! network. Everything random is drawn from one seeded generator, and every step runs to
//! completion before the next (the in-memory store never waits), so a seed replays exactly.
//!
//! The topic delivers every published event to every node at least once, late, reordered,
//! sometimes twice, sometimes never (a drop), retries failed deliveries like Event Grid (5xx:
//! later; 403 from a stopped region: dead-lettered at once). Nodes crash (losing their memory,
//! keeping their ledgers) and restart, regions stop and start, the database goes down, and
//! individual database operations fail before or after taking effect (a lost reply). Then
//! everything heals and the run continues until the fleet should have converged.
//!
//! Checked after each run (see [`check`]):
//! 1. No transaction is applied to the warehouse twice, and each application changed exactly
//!    what its command says, starting from the stock the previous application left (no lost
//!    or doubled update).
//! 2. Stock never goes below zero (also asserted at every write by the store).
//! 3. Every command accepted by any node (in any ledger) has been executed: a marker exists.
//! 4. Every node's ledger holds every transaction any ledger holds, none pending, each with the
//!    marker's outcome (status and executor); no node saw conflicting outcomes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use futures::executor::block_on;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use saldo_core::events::{
    DATA_VERSION, EventGridEvent, Operation, ProductLine, RECORD_UPDATED, RecordUpdated,
};
use saldo_core::views::{LedgerPage, LedgerState, NodeStatusView};
use saldo_store::{Fault, MemDb, MemStore};
use saldo_worker::node::NodeError;
use saldo_worker::{Bus, Clock, Config, ManualClock, Node, PeerClient};
use serde_json::Value;

pub type SimNode = Node<MemStore, ManualClock, SimBus, SimPeers>;

/// Knobs of one run. [`SimConfig::default`] is what the tests use.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub commands: usize,
    pub products: u64,
    /// Sim time during which commands flow and chaos happens, then heal time.
    pub active_ms: i64,
    pub heal_ms: i64,
    /// The last part of the heal time, in which no command is delivered any more: convergence
    /// needs (nodes - 1) takeover deadlines plus a couple of catch-up rounds after the last
    /// command any node accepted.
    pub quiet_ms: i64,
    pub takeover_ms: i64,
    pub liveness_ms: i64,
    pub sweep_ms: i64,
    pub heartbeat_ms: i64,
    pub catch_up_every: u64,
    pub drop_p: f64,
    pub dup_p: f64,
    pub max_delay_ms: i64,
    pub db_fault_p: f64,
    pub publish_fail_p: f64,
    pub peer_fail_p: f64,
    /// Chaos events (crash, stop, database down) during the active phase.
    pub chaos_events: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            commands: 40,
            products: 4,
            active_ms: 40_000,
            heal_ms: 40_000,
            quiet_ms: 25_000,
            takeover_ms: 3_000,
            liveness_ms: 6_000,
            sweep_ms: 1_000,
            heartbeat_ms: 2_500,
            catch_up_every: 5,
            drop_p: 0.1,
            dup_p: 0.1,
            max_delay_ms: 2_000,
            db_fault_p: 0.02,
            publish_fail_p: 0.1,
            peer_fail_p: 0.1,
            chaos_events: 4,
        }
    }
}

/// What a run did (printed by the binary; the tests assert on the checks).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub seed: u64,
    pub transactions: usize,
    pub applied: usize,
    pub rejected: usize,
    pub deliveries: usize,
    pub dead_lettered: usize,
    pub crashes: usize,
    pub taken_over: u64,
    pub adopted: u64,
    pub repairs: u64,
}

/// The simulated topic's inbox of published events (shared by all nodes' buses).
#[derive(Clone, Default)]
pub struct Topic(Arc<Mutex<Vec<EventGridEvent<Value>>>>);

/// A node's connection to the topic. Publishing can fail (before or after the topic took it).
pub struct SimBus {
    topic: Topic,
    faults: Arc<Mutex<Faults>>,
}

impl Bus for SimBus {
    async fn publish(&self, events: Vec<EventGridEvent<Value>>) -> Result<(), String> {
        match self.faults.lock().unwrap().publish() {
            Fault::Before | Fault::Contended => Err("simulated: topic unreachable".into()),
            Fault::After => {
                self.topic.0.lock().unwrap().extend(events);
                Err("simulated: reply lost".into())
            }
            Fault::None => {
                self.topic.0.lock().unwrap().extend(events);
                Ok(())
            }
        }
    }
}

/// The nodes that are up, by URL (what a peer's HTTP call would reach).
#[derive(Clone, Default)]
pub struct Directory(Arc<Mutex<BTreeMap<String, Arc<SimNode>>>>);

pub struct SimPeers {
    dir: Directory,
    faults: Arc<Mutex<Faults>>,
}

impl SimPeers {
    fn reach(&self, url: &str) -> Result<Arc<SimNode>, String> {
        if self.faults.lock().unwrap().peer_fails() {
            return Err(format!("simulated: {url} timed out"));
        }
        self.dir
            .0
            .lock()
            .unwrap()
            .get(url)
            .cloned()
            .ok_or_else(|| format!("simulated: {url} is down"))
    }
}

impl PeerClient for SimPeers {
    async fn status(&self, url: &str) -> Result<NodeStatusView, String> {
        Ok(self.reach(url)?.status().await)
    }
    async fn ledger(&self, url: &str, after: u64, limit: usize) -> Result<LedgerPage, String> {
        self.reach(url)?
            .feed(after, limit)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Fault injection shared by the store hook, the buses and the peer clients; its own seeded
/// generator, switched off when the run heals.
struct Faults {
    rng: StdRng,
    on: bool,
    db_p: f64,
    publish_p: f64,
    peer_p: f64,
}

impl Faults {
    fn pick(&mut self, p: f64) -> Fault {
        if !self.on || !self.rng.random_bool(p) {
            Fault::None
        } else if self.rng.random_bool(0.5) {
            Fault::Before
        } else {
            Fault::After
        }
    }
    fn publish(&mut self) -> Fault {
        let p = self.publish_p;
        self.pick(p)
    }
    fn peer_fails(&mut self) -> bool {
        let p = self.peer_p;
        self.on && self.rng.random_bool(p)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Up,
    /// The process is down: deliveries fail (retried).
    Crashed,
    /// The region (Function App) is stopped: deliveries answer 403 (dead-lettered).
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    /// The API publishes command `i`.
    Command(usize),
    Deliver {
        to: usize,
        events: Vec<usize>,
        attempt: u32,
    },
    Sweep(usize),
    Heartbeat(usize),
    Crash(usize),
    Stop(usize),
    Restart(usize),
    DbDown,
    DbUp,
    Heal,
}

struct World {
    cfg: SimConfig,
    rng: StdRng,
    clock: ManualClock,
    t0: DateTime<Utc>,
    db: MemDb,
    topic: Topic,
    dir: Directory,
    faults: Arc<Mutex<Faults>>,
    names: Vec<String>,
    life: Vec<Life>,
    nodes: Vec<Option<Arc<SimNode>>>,
    /// Every event ever published, by id (deliveries refer to them by id).
    events: Vec<Value>,
    commands: Vec<(String, Vec<ProductLine>)>,
    queue: BinaryHeap<Reverse<(i64, u64, Action)>>,
    seq: u64,
    healed: bool,
    report: Report,
    /// Counters of nodes that crashed (their in-memory counters die with them).
    dead_counters: Vec<BTreeMap<String, u64>>,
}

fn url(name: &str) -> String {
    format!("sim://{name}")
}

impl World {
    fn new(seed: u64, cfg: SimConfig) -> World {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let faults = Arc::new(Mutex::new(Faults {
            rng: StdRng::seed_from_u64(seed ^ 0x5eed_fa17),
            on: true,
            db_p: cfg.db_fault_p,
            publish_p: cfg.publish_fail_p,
            peer_p: cfg.peer_fail_p,
        }));
        let db = MemDb::new();
        let hook_faults = faults.clone();
        db.set_fault_hook(Some(Box::new(move |_node, op| {
            let mut f = hook_faults.lock().unwrap();
            // Reads failing "after" is the same as before; keep the distinction for writes.
            let p = f.db_p;
            let _ = op;
            match f.pick(p) {
                // A third of the failures before the effect are contention (conflict retries
                // spent) rather than an outage: the node must go on with its other work.
                Fault::Before if f.rng.random_bool(1.0 / 3.0) => Fault::Contended,
                other => other,
            }
        })));
        let names: Vec<String> = [
            "westeurope",
            "northeurope",
            "swedencentral",
            "francecentral",
            "uksouth",
        ]
        .iter()
        .take(cfg.nodes)
        .map(|s| s.to_string())
        .collect();
        World {
            rng: StdRng::seed_from_u64(seed),
            clock: ManualClock::new(t0),
            t0,
            db,
            topic: Topic::default(),
            dir: Directory::default(),
            faults,
            life: vec![Life::Crashed; names.len()],
            nodes: vec![None; names.len()],
            names,
            events: Vec::new(),
            commands: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            healed: false,
            report: Report {
                seed,
                ..Report::default()
            },
            dead_counters: Vec::new(),
            cfg,
        }
    }

    fn now_ms(&self) -> i64 {
        (self.clock.now() - self.t0).num_milliseconds()
    }

    fn at(&mut self, ms: i64, action: Action) {
        self.seq += 1;
        self.queue.push(Reverse((ms, self.seq, action)));
    }

    fn make_node(&self, i: usize) -> Arc<SimNode> {
        let name = &self.names[i];
        let cfg = Config {
            node: name.clone(),
            region: name.clone(),
            public_url: url(name),
            peers: self
                .names
                .iter()
                .filter(|n| *n != name)
                .map(|n| url(n))
                .collect(),
            takeover: Duration::milliseconds(self.cfg.takeover_ms),
            liveness: Duration::milliseconds(self.cfg.liveness_ms),
            peers_cache: Duration::milliseconds(500),
            catch_up_every: self.cfg.catch_up_every,
        };
        Arc::new(Node::new(
            cfg,
            self.db.store(name),
            self.clock.clone(),
            SimBus {
                topic: self.topic.clone(),
                faults: self.faults.clone(),
            },
            SimPeers {
                dir: self.dir.clone(),
                faults: self.faults.clone(),
            },
        ))
    }

    /// Starts (or restarts) node `i`: a fresh process over the same ledger.
    fn boot(&mut self, i: usize) {
        if let Some(old) = self.nodes[i].take() {
            self.dead_counters.push(old.counters_snapshot());
        }
        let node = self.make_node(i);
        // Start-up may fail (database down or a fault); the first sweep retries it.
        let _ = block_on(node.start());
        let _ = block_on(node.catch_up());
        self.dir
            .0
            .lock()
            .unwrap()
            .insert(url(&self.names[i]), node.clone());
        self.nodes[i] = Some(node);
        self.life[i] = Life::Up;
    }

    fn take_down(&mut self, i: usize, how: Life) {
        if let Some(old) = self.nodes[i].take() {
            self.dead_counters.push(old.counters_snapshot());
        }
        self.dir.0.lock().unwrap().remove(&url(&self.names[i]));
        self.life[i] = how;
        self.report.crashes += 1;
    }

    fn gen_commands(&mut self) {
        let seed = self.report.seed;
        let line = |id: u64, op: Operation| ProductLine {
            id,
            ean: 4_000_000 + id,
            name: format!("Product {id}"),
            saldo: match op {
                Operation::Set(n) => Some(n),
                _ => None,
            },
            change: match op {
                Operation::Change(d) => Some(d),
                _ => None,
            },
        };
        let mut cmds = Vec::new();
        for id in 1..=self.cfg.products {
            cmds.push(vec![line(id, Operation::Set(self.rng.random_range(2..=8)))]);
        }
        while cmds.len() < self.cfg.commands {
            let roll: f64 = self.rng.random();
            let mut ids: Vec<u64> = (1..=self.cfg.products).collect();
            let lines = if roll < 0.65 {
                let k = self.rng.random_range(1..=2usize);
                let mut v = Vec::new();
                for _ in 0..k {
                    let id = ids.remove(self.rng.random_range(0..ids.len()));
                    v.push(line(id, Operation::Change(-self.rng.random_range(1..=3))));
                }
                v
            } else if roll < 0.75 {
                vec![line(
                    self.rng.random_range(1..=self.cfg.products),
                    Operation::Change(self.rng.random_range(1..=4)),
                )]
            } else if roll < 0.82 {
                vec![line(
                    self.rng.random_range(1..=self.cfg.products),
                    Operation::Set(self.rng.random_range(0..=6)),
                )]
            } else if roll < 0.87 {
                vec![line(
                    100 + self.rng.random_range(0..3),
                    Operation::Change(-1),
                )]
            } else {
                // A multi-line purchase over three products: all or nothing.
                ids.truncate(3);
                ids.iter()
                    .map(|id| line(*id, Operation::Change(-self.rng.random_range(1..=2))))
                    .collect()
            };
            cmds.push(lines);
        }
        for (i, lines) in cmds.into_iter().enumerate() {
            let tx = format!("tx-{seed}-{i}");
            self.commands.push((tx, lines));
            // The first commands stock the shelves; the rest arrive over the active phase.
            let t = if (i as u64) < self.cfg.products {
                i as i64 * 10
            } else {
                self.rng.random_range(500..self.cfg.active_ms)
            };
            self.at(t, Action::Command(i));
        }
    }

    fn gen_chaos(&mut self) {
        for _ in 0..self.cfg.chaos_events {
            let t = self.rng.random_range(1_000..self.cfg.active_ms);
            let down_for = self.rng.random_range(1_000..15_000);
            let i = self.rng.random_range(0..self.names.len());
            match self.rng.random_range(0..3) {
                0 => {
                    self.at(t, Action::Crash(i));
                    self.at(t + down_for, Action::Restart(i));
                }
                1 => {
                    self.at(t, Action::Stop(i));
                    self.at(t + down_for, Action::Restart(i));
                }
                _ => {
                    self.at(t, Action::DbDown);
                    self.at(t + down_for / 4, Action::DbUp);
                }
            }
        }
    }

    /// Moves published events from the topic to scheduled deliveries, Event Grid style.
    fn route_published(&mut self) {
        let published: Vec<EventGridEvent<Value>> =
            std::mem::take(&mut *self.topic.0.lock().unwrap());
        for e in published {
            self.events.push(serde_json::to_value(&e).unwrap());
            self.fan_out(self.events.len() - 1);
        }
    }

    fn fan_out(&mut self, id: usize) {
        let now = self.now_ms();
        for to in 0..self.names.len() {
            if !self.healed && self.rng.random_bool(self.cfg.drop_p) {
                continue; // lost for this subscriber (e.g. dead-lettered on a bad day)
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
    }

    fn deliver(&mut self, to: usize, ids: Vec<usize>, attempt: u32) -> Result<(), String> {
        self.report.deliveries += 1;
        let body = Value::Array(ids.iter().map(|id| self.events[*id].clone()).collect());
        // The quiet tail: commands stop arriving (their time to live ran out) so that the
        // fleet can converge before the checks; completions and heartbeats still flow.
        let quiet_from = self.cfg.active_ms + self.cfg.heal_ms - self.cfg.quiet_ms;
        if self.now_ms() >= quiet_from
            && body
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["eventType"] == RECORD_UPDATED)
        {
            self.report.dead_lettered += 1;
            return Ok(());
        }
        let result = match (self.life[to], &self.nodes[to]) {
            (Life::Stopped, _) => {
                self.report.dead_lettered += 1; // 403: not retried
                return Ok(());
            }
            (Life::Up, Some(node)) => block_on(node.handle_delivery(&body)),
            _ => Err(NodeError::NotReady("process down".into())),
        };
        match result {
            Ok(_) => Ok(()),
            Err(NodeError::Invalid(m)) => Err(format!(
                "node {} refused a valid delivery: {m}",
                self.names[to]
            )),
            Err(_) if attempt >= 30 => {
                self.report.dead_lettered += 1;
                Ok(())
            }
            Err(_) => {
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
                Ok(())
            }
        }
    }

    fn run(&mut self) -> Result<(), String> {
        self.gen_commands();
        self.gen_chaos();
        for i in 0..self.names.len() {
            self.boot(i);
            let j = self.rng.random_range(0..self.cfg.sweep_ms);
            self.at(j, Action::Sweep(i));
            let j = self.rng.random_range(0..self.cfg.heartbeat_ms);
            self.at(j, Action::Heartbeat(i));
        }
        self.at(self.cfg.active_ms, Action::Heal);
        let end = self.cfg.active_ms + self.cfg.heal_ms;
        let mut steps = 0u64;
        while let Some(Reverse((t, _, action))) = self.queue.pop() {
            if t > end {
                break;
            }
            steps += 1;
            if steps > 2_000_000 {
                return Err("simulation did not finish within its step bound".into());
            }
            self.clock.set(self.t0 + Duration::milliseconds(t));
            match action {
                Action::Command(i) => {
                    let (tx, lines) = self.commands[i].clone();
                    let e = EventGridEvent {
                        id: tx.clone(),
                        event_type: RECORD_UPDATED.into(),
                        subject: "warehouse/products".into(),
                        event_time: self.clock.now(),
                        data: serde_json::to_value(RecordUpdated {
                            transaction: Some(tx),
                            products: lines,
                            traceparent: None,
                            tracestate: None,
                        })
                        .unwrap(),
                        data_version: DATA_VERSION.into(),
                        metadata_version: Some("1".into()),
                        topic: None,
                    };
                    self.topic.0.lock().unwrap().push(e);
                }
                Action::Deliver {
                    to,
                    events,
                    attempt,
                } => self.deliver(to, events, attempt)?,
                Action::Sweep(i) => {
                    if let (Life::Up, Some(n)) = (self.life[i], self.nodes[i].clone()) {
                        let _ = block_on(n.sweep());
                    }
                    let next = t + self.cfg.sweep_ms + self.rng.random_range(0..200);
                    self.at(next, Action::Sweep(i));
                }
                Action::Heartbeat(i) => {
                    if let (Life::Up, Some(n)) = (self.life[i], self.nodes[i].clone()) {
                        let _ = block_on(n.heartbeat());
                    }
                    let next = t + self.cfg.heartbeat_ms + self.rng.random_range(0..200);
                    self.at(next, Action::Heartbeat(i));
                }
                Action::Crash(i) if !self.healed => self.take_down(i, Life::Crashed),
                Action::Stop(i) if !self.healed => self.take_down(i, Life::Stopped),
                Action::Restart(i) => {
                    if self.life[i] != Life::Up {
                        self.boot(i);
                    }
                }
                Action::DbDown if !self.healed => self.db.set_down(true),
                Action::DbUp => self.db.set_down(false),
                Action::Heal => {
                    self.healed = true;
                    self.faults.lock().unwrap().on = false;
                    self.db.set_down(false);
                    for i in 0..self.names.len() {
                        if self.life[i] != Life::Up {
                            self.boot(i);
                        }
                    }
                }
                Action::Crash(_) | Action::Stop(_) | Action::DbDown => {}
            }
            self.route_published();
        }
        Ok(())
    }
}

/// Runs one seed and checks the invariants. `Err` explains the first broken invariant.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<Report, String> {
    let cfg = cfg.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut w = World::new(seed, cfg);
        let result = w.run().and_then(|()| check(&w));
        // The directory and the nodes' peer clients point at each other: break the cycle.
        w.dir.0.lock().unwrap().clear();
        result.map(|()| w)
    }));
    let w = match outcome {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => return Err(format!("seed {seed}: {e}")),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return Err(format!("seed {seed}: panicked: {msg}"));
        }
    };
    let mut report = w.report.clone();
    let mut counters: Vec<BTreeMap<String, u64>> = w.dead_counters.clone();
    counters.extend(w.nodes.iter().flatten().map(|n| n.counters_snapshot()));
    let sum = |k: &str| {
        counters
            .iter()
            .map(|c| c.get(k).copied().unwrap_or(0))
            .sum::<u64>()
    };
    report.taken_over = sum("takenOver");
    report.adopted = sum("adopted");
    report.repairs = sum("catchUpRepairs");
    let applied = w.db.applied();
    report.applied = applied.len();
    report.rejected = applied
        .iter()
        .filter(|a| a.outcome.status == saldo_core::events::Outcome::Rejected)
        .count();
    report.transactions = w.commands.len();
    Ok(report)
}

/// The invariants (see the module documentation).
fn check(w: &World) -> Result<(), String> {
    let applied = w.db.applied();
    let markers = w.db.markers();
    let commands: BTreeMap<&str, &Vec<ProductLine>> =
        w.commands.iter().map(|(t, l)| (t.as_str(), l)).collect();
    // 1. Each transaction applied at most once, each exactly as its command says, chained.
    let mut seen = BTreeSet::new();
    let mut stock: BTreeMap<u64, i64> = BTreeMap::new();
    for a in &applied {
        if !seen.insert(a.transaction.clone()) {
            return Err(format!("{} was applied twice", a.transaction));
        }
        let lines = commands
            .get(a.transaction.as_str())
            .ok_or_else(|| format!("{} is not a command", a.transaction))?;
        for (id, before) in &a.before {
            if *before != stock.get(id).copied() {
                return Err(format!(
                    "{}: product {id} read {before:?} but the previous application left {:?}",
                    a.transaction,
                    stock.get(id)
                ));
            }
        }
        if a.outcome.status == saldo_core::events::Outcome::Completed {
            for ((id, after), line) in a.after.iter().zip(lines.iter()) {
                let expect = match line.operation() {
                    Operation::Set(n) => n,
                    Operation::Change(d) => stock.get(id).copied().unwrap_or(0) + d,
                };
                if *after != expect || *id != line.id {
                    return Err(format!(
                        "{}: product {id} became {after}, expected {expect}",
                        a.transaction
                    ));
                }
                // 2. Never below zero.
                if *after < 0 {
                    return Err(format!(
                        "{}: product {id} went below zero ({after})",
                        a.transaction
                    ));
                }
                stock.insert(*id, *after);
            }
        } else if !a.after.is_empty() {
            return Err(format!("{}: a rejection changed stock", a.transaction));
        }
    }
    let final_stock: BTreeMap<u64, i64> =
        w.db.stock()
            .into_iter()
            .map(|(id, p)| (id, p.saldo))
            .collect();
    if final_stock != stock {
        return Err(format!(
            "final stock {final_stock:?} differs from the applied history {stock:?}"
        ));
    }
    if markers.len() != applied.len() {
        return Err(format!(
            "{} markers but {} applications",
            markers.len(),
            applied.len()
        ));
    }
    // 3. Every accepted command executed.
    let mut union = BTreeSet::new();
    for name in &w.names {
        union.extend(w.db.ledger(name).into_keys());
    }
    for tx in &union {
        if !markers.contains_key(tx) {
            return Err(format!("{tx} was accepted but never executed"));
        }
    }
    // 4. Every ledger complete and agreeing with the markers.
    for (i, name) in w.names.iter().enumerate() {
        let ledger = w.db.ledger(name);
        for tx in &union {
            let Some(e) = ledger.get(tx) else {
                return Err(format!("{name}'s ledger lacks {tx}"));
            };
            let Some(o) = &e.outcome else {
                return Err(format!("{name}'s ledger still has {tx} pending"));
            };
            if !o.agrees_with(&markers[tx]) || e.state() == LedgerState::Pending {
                return Err(format!(
                    "{name}'s ledger says {o:?} for {tx}, the marker {:?}",
                    markers[tx]
                ));
            }
        }
        if let Some(n) = &w.nodes[i]
            && n.counters_snapshot()["conflicts"] > 0
        {
            return Err(format!("{name} saw conflicting outcomes"));
        }
    }
    Ok(())
}
