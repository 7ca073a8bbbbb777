//! A deterministic simulation of the worker fleet as Azure runs it.
//!
//! Every region is a Function App on Flex Consumption: several HTTP instances (the webhook, the
//! reads, the ledger feed) over the region's one ledger, and the timer functions (heartbeat,
//! sweep) on an instance of their own that gets no HTTP traffic. The instances are the real
//! [`saldo_worker::Node`]s (the very code the HTTP handlers call) over one shared [`MemDb`];
//! each has its own clock, off the simulation's time by seconds either way and drawn again when
//! the instance restarts (so a restarted instance's clock may jump back). Deliveries and peer
//! calls to a region reach any of its HTTP instances.
//!
//! Handlers interleave at database-call granularity: every handler (a delivery, a sweep, a
//! heartbeat, a start-up) is a task, every database call of it a step of its own that takes
//! simulated time, and other handlers' steps, deliveries and chaos run in between. Everything
//! random is drawn from one seeded generator and the tasks are polled one at a time, so a seed
//! replays exactly.
//!
//! The topic delivers every published event to every region at least once, late, reordered,
//! sometimes twice, sometimes never (a drop, dead-lettered), in batches that mix in earlier
//! events, malformed events and events of another data version; it retries failed deliveries
//! like Event Grid (5xx: later; 403 from a stopped region or 400: dead-lettered at once).
//! Instances crash (losing their memory and whatever handler was running, keeping their
//! ledgers) and are restarted by the host, whole regions crash or stop and start, the database
//! goes down, and individual database operations fail before or after taking effect (a lost
//! reply, an unknown commit result) or as contended. Then everything heals and the run goes on
//! until the fleet should have converged.
//!
//! Checked while running:
//! - **Acknowledged means recorded.** When an instance answers a delivery 2xx, every valid
//!   command in it is in the region's ledger at that moment and every bad event in its
//!   quarantine; a delivery is refused (400) only if nothing in it is valid.
//!
//! Checked after each run (see [`check`]):
//! 1. No transaction is applied to the warehouse twice, and each application changed exactly
//!    what its command says, starting from the stock the previous application left (no lost
//!    or doubled update).
//! 2. Stock never goes below zero (also asserted at every write by the store).
//! 3. Every command accepted by any node (in any ledger) has been executed: a marker exists;
//!    every command the API published either has a marker or was dead-lettered by every region
//!    (it is named in [`Report::undeliverable`]); no ledger holds anything but commands.
//! 4. Every node's ledger holds every transaction any ledger holds, none pending, each with the
//!    marker's outcome (status and executor); no instance saw conflicting outcomes.
//! 5. The feed never skipped: for every reader region and peer, every entry of the peer's
//!    ledger numbered at or below the reader's stored cursor was served to the reader in that
//!    state.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use saldo_core::events::{
    DATA_VERSION, EventGridEvent, NODE_HEARTBEAT, Operation, ProductLine, RECORD_UPDATED,
    RecordUpdated,
};
use saldo_core::views::{LedgerPage, LedgerState, NodeStatusView};
use saldo_store::{Fault, MemDb, MemStore, Mutation};
use saldo_worker::node::{Delivery, NodeError};
use saldo_worker::{Bus, Clock, Config, ManualClock, Node, PeerClient};
use serde_json::{Value, json};

pub type SimNode = Node<MemStore, SimClock, SimBus, SimPeers>;

/// One instance's clock: the simulation's time plus this machine's offset (seconds of skew;
/// a restarted instance draws a new one, so its clock may jump back).
#[derive(Clone)]
pub struct SimClock {
    base: ManualClock,
    offset: Duration,
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        self.base.now() + self.offset
    }
}

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
    pub peers_cache_ms: i64,
    pub sweep_ms: i64,
    pub heartbeat_ms: i64,
    pub catch_up_every: u64,
    pub drop_p: f64,
    pub dup_p: f64,
    pub max_delay_ms: i64,
    pub db_fault_p: f64,
    pub publish_fail_p: f64,
    pub peer_fail_p: f64,
    /// Chaos events (instance crash, region crash, stop, database down) during the active phase.
    pub chaos_events: usize,
    /// HTTP instances per region over its one ledger (deliveries and peer calls go to any of
    /// them); with 2 or more, heartbeat and sweep run on one more instance of their own, as on
    /// Flex Consumption. With 1, one process does everything.
    pub instances: usize,
    /// Each instance's clock is off by up to this much, either way (drawn again on restart).
    pub clock_skew_ms: i64,
    /// A database call takes up to this long (simulated); every call is a step of its own, so
    /// other handlers run meanwhile. 0: calls take no time (still one step each).
    pub db_latency_ms: i64,
    /// Probability that a delivery carries a bad event too (malformed, unknown type, another
    /// data version), and that a delivery is nothing but a bad event.
    pub bad_event_p: f64,
    /// Probability that a peer's feed page is cut short (page boundaries fall anywhere).
    pub feed_cut_p: f64,
    /// A deliberate store bug (the mutation tests); [`Mutation::None`] otherwise.
    pub mutation: Mutation,
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
            peers_cache_ms: 500,
            sweep_ms: 1_000,
            heartbeat_ms: 2_500,
            catch_up_every: 5,
            drop_p: 0.1,
            dup_p: 0.1,
            max_delay_ms: 2_000,
            db_fault_p: 0.02,
            publish_fail_p: 0.1,
            peer_fail_p: 0.1,
            chaos_events: 6,
            instances: 2,
            clock_skew_ms: 3_000,
            db_latency_ms: 20,
            bad_event_p: 0.05,
            feed_cut_p: 0.25,
            mutation: Mutation::None,
        }
    }
}

impl SimConfig {
    /// `k` HTTP instances per region (plus a timer instance when `k` ≥ 2).
    pub fn with_instances(k: usize) -> Self {
        SimConfig {
            instances: k.clamp(1, 8),
            ..SimConfig::default()
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
    /// Instance crashes, region crashes and stops.
    pub crashes: usize,
    pub taken_over: u64,
    pub adopted: u64,
    pub repairs: u64,
    /// Database calls that were a step of their own, interleaved with other handlers.
    pub steps: u64,
    /// Deliveries answered 2xx whose commands and bad events were checked on the spot.
    pub acknowledged: usize,
    /// Bad events quarantined over all regions.
    pub quarantined: usize,
    /// Feed pages served to peers (their no-skip property is checked at the end).
    pub feed_pages: usize,
    /// Restarted instances whose clock went back behind their previous process's.
    pub clock_jumps_back: usize,
    /// Commands the API published that every region dead-lettered, by name: never executed.
    pub undeliverable: Vec<String>,
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

/// One running HTTP instance as the network reaches it.
#[derive(Clone)]
struct Endpoint {
    node: Arc<SimNode>,
    alive: Arc<AtomicBool>,
}

/// The HTTP instances that are up, by region URL (what a peer's HTTP call would reach).
#[derive(Clone, Default)]
pub struct Directory(Arc<Mutex<BTreeMap<String, Vec<Endpoint>>>>);

/// What every feed page served: (reader region, peer URL) → (transaction, seq) served.
#[derive(Clone, Default)]
struct FeedLog(Arc<Mutex<Served>>);

#[derive(Default)]
struct Served {
    entries: BTreeMap<(String, String), BTreeSet<(String, u64)>>,
    pages: usize,
}

pub struct SimPeers {
    dir: Directory,
    faults: Arc<Mutex<Faults>>,
    /// The region this client's instance belongs to (the reader, in the feed log).
    reader: String,
    log: FeedLog,
    cut_p: f64,
}

impl SimPeers {
    /// A call reaches one of the region's HTTP instances, chosen by the load balancer.
    fn reach(&self, url: &str) -> Result<Endpoint, String> {
        let mut f = self.faults.lock().unwrap();
        if f.peer_fails() {
            return Err(format!("simulated: {url} timed out"));
        }
        let dir = self.dir.0.lock().unwrap();
        let up = dir
            .get(url)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("simulated: {url} is down"))?;
        Ok(up[f.rng.random_range(0..up.len())].clone())
    }
}

/// An answer from an instance that crashed while answering never arrives.
fn answered<T>(e: &Endpoint, url: &str, r: T) -> Result<T, String> {
    if e.alive.load(Ordering::Relaxed) {
        Ok(r)
    } else {
        Err(format!("simulated: {url} reset the connection (crashed)"))
    }
}

impl PeerClient for SimPeers {
    async fn status(&self, url: &str) -> Result<NodeStatusView, String> {
        let e = self.reach(url)?;
        let s = e.node.status().await;
        answered(&e, url, s)
    }
    async fn ledger(&self, url: &str, after: u64, limit: usize) -> Result<LedgerPage, String> {
        let e = self.reach(url)?;
        // The caller asks for `limit`; the simulation sometimes asks for less, so that page
        // boundaries (where a tie would skip) fall anywhere in the feed.
        let limit = {
            let mut f = self.faults.lock().unwrap();
            if f.rng.random_bool(self.cut_p) {
                f.rng.random_range(1..=3).min(limit)
            } else {
                limit
            }
        };
        let page = e.node.feed(after, limit).await.map_err(|e| e.to_string())?;
        let page = answered(&e, url, page)?;
        let mut log = self.log.0.lock().unwrap();
        log.pages += 1;
        log.entries
            .entry((self.reader.clone(), url.to_string()))
            .or_default()
            .extend(page.entries.iter().map(|x| (x.transaction.clone(), x.seq)));
        Ok(page)
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
    /// The region (Function App) is stopped: deliveries answer 403 (dead-lettered).
    Stopped,
}

/// What an event the topic carries is, for the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Command `i` (a valid `recordUpdated`).
    Command(usize),
    /// A completion or heartbeat a node published.
    Fleet,
    /// Malformed, of an unknown type, of another data version or from outside the fleet: to be
    /// quarantined.
    Bad,
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
    /// The next step (database call) of a running handler.
    Step(u64),
    Sweep(usize),
    Heartbeat(usize),
    /// One instance (slot) of a region crashes; the host restarts it later.
    Crash(usize, usize),
    Boot(usize, usize),
    /// The region's host crashes (all instances), or the region is stopped.
    CrashRegion(usize),
    Stop(usize),
    Restart(usize),
    DbDown,
    DbUp,
    Heal,
}

/// One running process of a region.
struct Instance {
    uid: u64,
    node: Arc<SimNode>,
    alive: Arc<AtomicBool>,
}

/// What a handler task is, to act on its end (or on its loss in a crash).
#[derive(Debug, Clone)]
enum Job {
    Delivery {
        to: usize,
        events: Vec<usize>,
        attempt: u32,
    },
    Sweep,
    Heartbeat,
    Start,
}

type HandlerFuture = Pin<Box<dyn Future<Output = Option<Result<Delivery, NodeError>>>>>;

struct Task {
    fut: HandlerFuture,
    instance: u64,
    job: Job,
    polls: u32,
}

struct World {
    cfg: SimConfig,
    rng: StdRng,
    clock: ManualClock,
    t0: DateTime<Utc>,
    db: MemDb,
    topic: Topic,
    dir: Directory,
    log: FeedLog,
    faults: Arc<Mutex<Faults>>,
    names: Vec<String>,
    life: Vec<Life>,
    /// Per region: its HTTP instances' slots, then (with `instances` ≥ 2) the timer instance's.
    slots: Vec<Vec<Option<Instance>>>,
    /// The clock offset (ms) each slot's process had last.
    offsets: Vec<Vec<Option<i64>>>,
    /// Every event ever published, by id (deliveries refer to them by id), and what it is.
    events: Vec<Value>,
    kinds: Vec<Kind>,
    commands: Vec<(String, Vec<ProductLine>)>,
    /// Regions that dead-lettered each command (Event Grid's dead-letter names the event).
    dead: BTreeMap<usize, BTreeSet<usize>>,
    queue: BinaryHeap<Reverse<(i64, u64, Action)>>,
    seq: u64,
    tasks: BTreeMap<u64, Task>,
    next_task: u64,
    next_uid: u64,
    /// The timer functions run as singletons: the running sweep and heartbeat per region.
    timer_tasks: Vec<[Option<u64>; 2]>,
    healed: bool,
    report: Report,
    /// Counters of instances that died (their in-memory counters die with them).
    dead_counters: Vec<BTreeMap<String, u64>>,
}

fn url(name: &str) -> String {
    format!("sim://{name}")
}

fn noop_context() -> Context<'static> {
    Context::from_waker(Waker::noop())
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
        db.set_stepping(true);
        db.mutate(cfg.mutation);
        let hook_faults = faults.clone();
        db.set_fault_hook(Some(Box::new(move |_node, _op| {
            let mut f = hook_faults.lock().unwrap();
            let p = f.db_p;
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
        let total = Self::slot_count(&cfg);
        World {
            rng: StdRng::seed_from_u64(seed),
            clock: ManualClock::new(t0),
            t0,
            db,
            topic: Topic::default(),
            dir: Directory::default(),
            log: FeedLog::default(),
            faults,
            life: vec![Life::Up; names.len()],
            slots: (0..names.len())
                .map(|_| (0..total).map(|_| None).collect())
                .collect(),
            timer_tasks: vec![[None, None]; names.len()],
            offsets: vec![vec![None; total]; names.len()],
            names,
            events: Vec::new(),
            kinds: Vec::new(),
            commands: Vec::new(),
            dead: BTreeMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            tasks: BTreeMap::new(),
            next_task: 0,
            next_uid: 0,
            healed: false,
            report: Report {
                seed,
                ..Report::default()
            },
            dead_counters: Vec::new(),
            cfg,
        }
    }

    fn http_count(cfg: &SimConfig) -> usize {
        cfg.instances.max(1)
    }

    fn slot_count(cfg: &SimConfig) -> usize {
        let http = Self::http_count(cfg);
        if http >= 2 { http + 1 } else { 1 }
    }

    fn now_ms(&self) -> i64 {
        (self.clock.now() - self.t0).num_milliseconds()
    }

    fn at(&mut self, ms: i64, action: Action) {
        self.seq += 1;
        self.queue.push(Reverse((ms, self.seq, action)));
    }

    fn make_node(&mut self, i: usize, slot: usize) -> Arc<SimNode> {
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
    fn publish_endpoints(&mut self, i: usize) {
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
    fn kill(&mut self, i: usize, slot: usize) {
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
    fn boot(&mut self, i: usize, slot: usize) {
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
    fn take_down(&mut self, i: usize, stop: bool) {
        self.report.crashes += 1;
        for slot in 0..self.slots[i].len() {
            self.kill(i, slot);
        }
        if stop {
            self.life[i] = Life::Stopped;
        }
    }

    fn boot_region(&mut self, i: usize) {
        self.life[i] = Life::Up;
        for slot in 0..self.slots[i].len() {
            if self.slots[i][slot].is_none() {
                self.boot(i, slot);
            }
        }
    }

    fn spawn(&mut self, instance: u64, job: Job, fut: HandlerFuture) -> u64 {
        self.next_task += 1;
        let id = self.next_task;
        self.tasks.insert(
            id,
            Task {
                fut,
                instance,
                job,
                polls: 0,
            },
        );
        let now = self.now_ms();
        self.at(now, Action::Step(id));
        id
    }

    /// Runs a task to its next database call (or its end).
    fn step(&mut self, id: u64) -> Result<(), String> {
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(()); // lost in a crash
        };
        task.polls += 1;
        if task.polls > 100_000 {
            return Err(format!("a {:?} handler never finished", task.job));
        }
        let mut cx = noop_context();
        match task.fut.as_mut().poll(&mut cx) {
            Poll::Pending => {
                // A database call is on the wire: it takes effect when the task next runs.
                self.report.steps += 1;
                let now = self.now_ms();
                let d = self.rng.random_range(0..=self.cfg.db_latency_ms);
                self.at(now + d, Action::Step(id));
                Ok(())
            }
            Poll::Ready(out) => {
                let task = self.tasks.remove(&id).expect("task");
                match (task.job, out) {
                    (
                        Job::Delivery {
                            to,
                            events,
                            attempt,
                        },
                        Some(result),
                    ) => self.delivered(to, events, attempt, result),
                    _ => Ok(()),
                }
            }
        }
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
        let slots = Self::slot_count(&self.cfg);
        for _ in 0..self.cfg.chaos_events {
            let t = self.rng.random_range(1_000..self.cfg.active_ms);
            let down_for = self.rng.random_range(1_000..15_000);
            let i = self.rng.random_range(0..self.names.len());
            match self.rng.random_range(0..6) {
                0 | 1 => {
                    // One instance dies; its host restarts it soon.
                    let slot = self.rng.random_range(0..slots);
                    self.at(t, Action::Crash(i, slot));
                    let back = self.rng.random_range(200..5_000);
                    self.at(t + back, Action::Boot(i, slot));
                }
                2 => {
                    self.at(t, Action::CrashRegion(i));
                    self.at(t + down_for, Action::Restart(i));
                }
                3 => {
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

    /// A new event on the topic (published by the API, a node, or the simulation's bad actor).
    fn push_event(&mut self, v: Value, kind: Kind) -> usize {
        self.events.push(v);
        self.kinds.push(kind);
        self.events.len() - 1
    }

    /// Moves published events from the topic to scheduled deliveries, Event Grid style.
    fn route_published(&mut self) {
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
    fn bad_event(&mut self) -> usize {
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

    fn fan_out(&mut self, id: usize) {
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

    fn dead_letter(&mut self, to: usize, ids: &[usize]) {
        self.report.dead_lettered += 1;
        for id in ids {
            if let Kind::Command(i) = self.kinds[*id] {
                self.dead.entry(i).or_default().insert(to);
            }
        }
    }

    fn retry_delivery(&mut self, to: usize, ids: Vec<usize>, attempt: u32) {
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

    fn deliver(&mut self, to: usize, ids: Vec<usize>, attempt: u32) {
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
    fn delivered(
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

    /// A timer fires on the region's timer instance; like Azure Functions' timer triggers it
    /// does not start while its previous run is still going.
    fn timer(&mut self, i: usize, which: usize) {
        if self.life[i] != Life::Up {
            return;
        }
        if let Some(id) = self.timer_tasks[i][which]
            && self.tasks.contains_key(&id)
        {
            return;
        }
        let Some(inst) = self.slots[i].last().and_then(|s| s.as_ref()) else {
            return;
        };
        let (node, uid) = (inst.node.clone(), inst.uid);
        let (job, fut): (Job, HandlerFuture) = if which == 0 {
            (
                Job::Sweep,
                Box::pin(async move {
                    let _ = node.sweep().await;
                    None
                }),
            )
        } else {
            (
                Job::Heartbeat,
                Box::pin(async move {
                    let _ = node.heartbeat().await;
                    None
                }),
            )
        };
        let id = self.spawn(uid, job, fut);
        self.timer_tasks[i][which] = Some(id);
    }

    fn run(&mut self) -> Result<(), String> {
        self.gen_commands();
        self.gen_chaos();
        for i in 0..self.names.len() {
            self.boot_region(i);
            let j = self.rng.random_range(0..self.cfg.sweep_ms);
            self.at(j, Action::Sweep(i));
            let j = self.rng.random_range(0..self.cfg.heartbeat_ms);
            self.at(j, Action::Heartbeat(i));
        }
        self.at(self.cfg.active_ms, Action::Heal);
        let end = self.cfg.active_ms + self.cfg.heal_ms;
        let mut steps = 0u64;
        while let Some(Reverse((t, seq, action))) = self.queue.pop() {
            if t > end {
                // Not due before the end: back in the queue, where the end-of-run accounting
                // below finds it (dropping it here lost a delivery that was still owed).
                self.queue.push(Reverse((t, seq, action)));
                break;
            }
            steps += 1;
            if steps > 5_000_000 {
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
                } => self.deliver(to, events, attempt),
                Action::Step(id) => self.step(id)?,
                Action::Sweep(i) => {
                    self.timer(i, 0);
                    let next = t + self.cfg.sweep_ms + self.rng.random_range(0..200);
                    self.at(next, Action::Sweep(i));
                }
                Action::Heartbeat(i) => {
                    self.timer(i, 1);
                    let next = t + self.cfg.heartbeat_ms + self.rng.random_range(0..200);
                    self.at(next, Action::Heartbeat(i));
                }
                Action::Crash(i, slot) if !self.healed && self.slots[i][slot].is_some() => {
                    self.report.crashes += 1;
                    self.kill(i, slot);
                }
                Action::Boot(i, slot) => {
                    if self.life[i] == Life::Up && self.slots[i][slot].is_none() {
                        self.boot(i, slot);
                    }
                }
                Action::CrashRegion(i) if !self.healed => self.take_down(i, false),
                Action::Stop(i) if !self.healed => self.take_down(i, true),
                Action::Restart(i) => self.boot_region(i),
                Action::DbDown if !self.healed => self.db.set_down(true),
                Action::DbUp => self.db.set_down(false),
                Action::Heal => {
                    self.healed = true;
                    self.faults.lock().unwrap().on = false;
                    self.db.set_down(false);
                    for i in 0..self.names.len() {
                        self.boot_region(i);
                    }
                }
                Action::Crash(..) | Action::CrashRegion(_) | Action::Stop(_) | Action::DbDown => {}
            }
            self.route_published();
        }
        // The end: whatever Event Grid still holds for a region (a retry not yet due, or a
        // delivery in flight) has outlived its time to live and is dead-lettered.
        let left: Vec<(usize, Vec<usize>)> = std::mem::take(&mut self.queue)
            .into_iter()
            .filter_map(|Reverse((_, _, a))| match a {
                Action::Deliver { to, events, .. } => Some((to, events)),
                _ => None,
            })
            .chain(
                std::mem::take(&mut self.tasks)
                    .into_values()
                    .filter_map(|t| match t.job {
                        Job::Delivery { to, events, .. } => Some((to, events)),
                        _ => None,
                    }),
            )
            .collect();
        for (to, events) in left {
            self.dead_letter(to, &events);
        }
        Ok(())
    }

    fn all_counters(&self) -> Vec<BTreeMap<String, u64>> {
        let mut counters = self.dead_counters.clone();
        counters.extend(
            self.slots
                .iter()
                .flatten()
                .flatten()
                .map(|inst| inst.node.counters_snapshot()),
        );
        counters
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
        w.tasks.clear();
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
    let counters = w.all_counters();
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
    report.quarantined = w.names.iter().map(|n| w.db.quarantine_of(n).len()).sum();
    report.feed_pages = w.log.0.lock().unwrap().pages;
    let markers = w.db.markers();
    report.undeliverable = w
        .commands
        .iter()
        .filter(|(tx, _)| !markers.contains_key(tx))
        .map(|(tx, _)| tx.clone())
        .collect();
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
    // 3. Every accepted command executed; every published one executed or undeliverable.
    let mut union = BTreeSet::new();
    for name in &w.names {
        union.extend(w.db.ledger(name).into_keys());
    }
    for tx in &union {
        if !commands.contains_key(tx.as_str()) {
            return Err(format!("{tx} is in a ledger but is no command"));
        }
        if !markers.contains_key(tx) {
            return Err(format!("{tx} was accepted but never executed"));
        }
    }
    for (i, (tx, _)) in w.commands.iter().enumerate() {
        if markers.contains_key(tx) {
            continue;
        }
        let dead = w.dead.get(&i).map(|d| d.len()).unwrap_or(0);
        if dead < w.names.len() {
            return Err(format!(
                "{tx} was published, never executed, and dead-lettered by only {dead} of {} regions",
                w.names.len()
            ));
        }
    }
    // 4. Every ledger complete and agreeing with the markers.
    for name in &w.names {
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
    }
    let conflicts: u64 = w
        .all_counters()
        .iter()
        .map(|c| c.get("conflicts").copied().unwrap_or(0))
        .sum();
    if conflicts > 0 {
        return Err(format!("instances saw {conflicts} conflicting outcomes"));
    }
    // 5. The feed never skipped an entry below a cursor.
    let log = w.log.0.lock().unwrap();
    for reader in &w.names {
        for (peer_url, cursor) in w.db.cursors(reader) {
            let Some(peer) = w.names.iter().find(|n| url(n) == peer_url) else {
                continue;
            };
            let served = log.entries.get(&(reader.clone(), peer_url.clone()));
            for (tx, e) in w.db.ledger(peer) {
                if e.seq <= cursor && !served.is_some_and(|s| s.contains(&(tx.clone(), e.seq))) {
                    return Err(format!(
                        "{peer}'s feed skipped {tx} (seq {}) for {reader}, whose cursor is {cursor}",
                        e.seq
                    ));
                }
            }
        }
    }
    Ok(())
}
