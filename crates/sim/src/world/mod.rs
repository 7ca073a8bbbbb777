//! The simulated fleet and its run: regions of instances over one database, handler tasks,
//! the simulated Event Grid, the scenario, and the checks after the run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use saldo_core::events::{
    DATA_VERSION, EventGridEvent, ProductLine, RECORD_UPDATED, RecordUpdated,
};
use saldo_store::{Fault, MemDb};
use saldo_worker::node::{Delivery, NodeError};
use saldo_worker::{Clock, ManualClock};
use serde_json::Value;

use crate::adapters::{Directory, FeedLog, SimNode, Topic};
use crate::config::{Report, SimConfig};
use crate::faults::Faults;

mod check;
mod instances;
mod scenario;
mod tasks;
mod topic;

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
    pub(super) fn new(seed: u64, cfg: SimConfig) -> World {
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

    pub(super) fn run(&mut self) -> Result<(), String> {
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
        while let Some((t, action)) = pop_due(&mut self.queue, end) {
            steps += 1;
            if steps > 5_000_000 {
                return Err("simulation did not finish within its step bound".into());
            }
            self.clock.set(self.t0 + Duration::milliseconds(t));
            self.act(t, action)?;
            self.route_published();
        }
        self.dead_letter_what_is_left();
        Ok(())
    }

    /// Does what the queue said was due at `t`.
    fn act(&mut self, t: i64, action: Action) -> Result<(), String> {
        match action {
            Action::Command(i) => self.publish_command(i),
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
        Ok(())
    }

    /// The API publishes command `i` to the topic.
    fn publish_command(&mut self, i: usize) {
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

    /// Dead-letters what Event Grid still owes at the end of the run.
    fn dead_letter_what_is_left(&mut self) {
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
/// The next action due at or before `end`, if any. One due later stays in the queue, where the
/// end-of-run accounting finds it: popping it to find the end and dropping it lost a delivery
/// that was still owed (seeds 4205, 4401 and 7031 once failed so).
fn pop_due<T: Ord>(queue: &mut BinaryHeap<Reverse<(i64, u64, T)>>, end: i64) -> Option<(i64, T)> {
    match queue.peek() {
        Some(Reverse((t, _, _))) if *t <= end => {
            let Reverse((t, _, action)) = queue.pop().expect("peeked");
            Some((t, action))
        }
        _ => None,
    }
}

pub fn run(seed: u64, cfg: &SimConfig) -> Result<Report, String> {
    let cfg = cfg.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut w = World::new(seed, cfg);
        let result = w.run().and_then(|()| check::check(&w));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The run loop takes what is due by the end and leaves the rest owed, for the end-of-run
    /// accounting (a delivery retry due after the end is dead-lettered there, not lost).
    #[test]
    fn what_is_due_after_the_end_stays_in_the_queue() {
        let mut q = BinaryHeap::new();
        q.push(Reverse((15, 1, "retry after the end")));
        q.push(Reverse((5, 0, "due")));
        q.push(Reverse((10, 2, "due at the end")));
        assert_eq!(pop_due(&mut q, 10), Some((5, "due")));
        assert_eq!(pop_due(&mut q, 10), Some((10, "due at the end")));
        assert_eq!(pop_due(&mut q, 10), None);
        assert_eq!(q.len(), 1, "the retry is still owed");
        assert_eq!(pop_due(&mut q, 10), None, "and stays so");
    }
}
