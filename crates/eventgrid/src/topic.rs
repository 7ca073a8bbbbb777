//! The topic: accepted events, subscriptions and the delivery engine.
//!
//! Delivery design: every subscription has its own bounded queue (events due now, plus a heap
//! of retries ordered by due time), its own dispatcher task and a fixed number of delivery
//! slots (a semaphore). A slow or stopped endpoint only fills its own queue and slots, so it
//! never delays deliveries to the others. Event Grid never waits to fill a batch: a dispatcher
//! sends whatever is due as soon as a slot is free.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};

use crate::deadletter;
use crate::error::ApiError;
use crate::policy::{self, Next, Outcome};
use crate::rate::RateLimit;
use crate::schema::{Accepted, InputSchema};
use crate::spill::{SpillFile, Spilled};
use crate::subscription::{MAX_SUBSCRIPTIONS, Properties, Subscription};
use crate::wal::{PubItem, Record, Replay, Target, Wal};

/// The Azure subscription id used in local resource ids.
pub const LOCAL_SUBSCRIPTION_ID: &str = "00000000-0000-0000-0000-000000000000";

/// The resource id of a local topic called `name`.
pub fn topic_resource_id(name: &str) -> String {
    format!(
        "/subscriptions/{LOCAL_SUBSCRIPTION_ID}/resourceGroups/saldo-local/providers/Microsoft.EventGrid/topics/{name}"
    )
}

/// A scaled timeout never drops below this: at `--time-scale 1000` the 30 s delivery timeout
/// would be 30 ms, and a loaded machine would turn healthy deliveries into timeouts.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Config {
    /// The topic key (base64, like Azure's; SAS tokens are signed with its decoded bytes).
    pub key: String,
    pub data_dir: PathBuf,
    pub deadletter_dir: PathBuf,
    pub topic_name: String,
    pub input_schema: InputSchema,
    /// Every duration (retry delays, probation, TTL, timeouts, handshake window) is divided by this.
    pub time_scale: f64,
    /// Subscriptions to create at start (no handshake: they describe subscriptions that exist).
    pub subscriptions_file: Option<PathBuf>,
    /// Events one subscription keeps in memory; the rest of its backlog waits in its spill file
    /// (see `spill.rs`). Never a reason to refuse publishing.
    pub max_in_memory: usize,
    /// The topic's publish rate limits (0: unlimited); beyond them publishing answers 429.
    pub max_events_per_second: u64,
    pub max_bytes_per_second: u64,
    /// The identity stand-in's public key (base64 Ed25519): Bearer tokens it signed are accepted.
    pub entra_public_key: Option<String>,
    /// Azure's `disableLocalAuth`: publishing with keys or SAS tokens is refused.
    pub disable_local_auth: bool,
    /// Concurrent in-flight deliveries per subscription.
    pub max_in_flight: usize,
    /// The event log is compacted when it is larger than this (and has doubled since the last time).
    pub compact_bytes: u64,
}

impl Config {
    pub fn new(
        key: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        deadletter_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            key: key.into(),
            data_dir: data_dir.into(),
            deadletter_dir: deadletter_dir.into(),
            topic_name: "saldo-local".into(),
            input_schema: InputSchema::EventGrid,
            time_scale: 1.0,
            subscriptions_file: None,
            max_in_memory: 10_000,
            max_events_per_second: crate::rate::AZURE_EVENTS_PER_SECOND,
            max_bytes_per_second: crate::rate::AZURE_BYTES_PER_SECOND,
            entra_public_key: None,
            disable_local_auth: false,
            max_in_flight: 8,
            compact_bytes: 64 * 1024 * 1024,
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// An accepted event, shared by every subscription that has to deliver it.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    pub publish_ms: i64,
    pub id: String,
    pub data_version: String,
    pub json: Box<RawValue>,
}

impl Event {
    /// An event as stored (log or spill file): its id and dataVersion are read from the JSON.
    fn from_raw(seq: u64, publish_ms: i64, json: Box<RawValue>) -> Self {
        let head: Head = serde_json::from_str(json.get()).unwrap_or(Head {
            id: None,
            data_version: None,
        });
        Self {
            seq,
            publish_ms,
            id: head.id.unwrap_or_default(),
            data_version: head.data_version.unwrap_or_default(),
            json,
        }
    }
}

#[derive(Debug, Clone)]
struct Item {
    ev: Arc<Event>,
    /// Attempts made so far (the next attempt's `aeg-delivery-count`).
    attempts: u32,
    last: Option<Outcome>,
}

struct Later {
    due: i64,
    item: Item,
}
impl PartialEq for Later {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.item.ev.seq) == (o.due, o.item.ev.seq)
    }
}
impl Eq for Later {}
impl PartialOrd for Later {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Later {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.item.ev.seq).cmp(&(o.due, o.item.ev.seq))
    }
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Item>,
    later: BinaryHeap<Reverse<Later>>,
}

/// Counters of one subscription (events, except `attempts`).
#[derive(Default)]
pub struct Counters {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dropped: AtomicU64,
    pub pending: AtomicU64,
    pub attempts: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub spill_errors: AtomicU64,
}

impl Counters {
    fn json(&self) -> Value {
        json!({
            "delivered": self.delivered.load(SeqCst),
            "retried": self.retried.load(SeqCst),
            "deadLettered": self.dead_lettered.load(SeqCst),
            "dropped": self.dropped.load(SeqCst),
            "pending": self.pending.load(SeqCst),
            "attempts": self.attempts.load(SeqCst),
            "failedAttempts": self.failed_attempts.load(SeqCst),
            "spillErrors": self.spill_errors.load(SeqCst),
        })
    }
}

struct SubState {
    name: String,
    cfg: RwLock<Arc<Subscription>>,
    queue: Mutex<Queue>,
    wake: Notify,
    closed: AtomicBool,
    slots: Arc<Semaphore>,
    counters: Counters,
    /// Until when (ms since the epoch) the endpoint is on probation.
    probation_until: AtomicI64,
    failures_in_row: AtomicU32,
    /// Events held in memory: queued, waiting for a retry or in flight. At most `max_resident`
    /// (beyond it events are spilled), so a stopped subscriber costs bounded memory.
    resident: AtomicU64,
    max_resident: u64,
    /// The backlog beyond `max_resident`. Lock order: `spill`, then `queue`.
    spill: Mutex<SpillFile>,
    /// Mirror of the spill file's count, read without its lock.
    spilled: AtomicU64,
}

impl SubState {
    fn new(sub: Subscription, slots: usize, max_resident: usize, spill_dir: &Path) -> Self {
        let spill = SpillFile::new(spill_dir.join(format!("{}.jsonl", sub.name)));
        Self {
            resident: AtomicU64::new(0),
            max_resident: max_resident as u64,
            spill: Mutex::new(spill),
            spilled: AtomicU64::new(0),
            name: sub.name.clone(),
            cfg: RwLock::new(Arc::new(sub)),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            slots: Arc::new(Semaphore::new(slots)),
            counters: Counters::default(),
            probation_until: AtomicI64::new(0),
            failures_in_row: AtomicU32::new(0),
        }
    }

    fn cfg(&self) -> Arc<Subscription> {
        self.cfg.read().expect("lock poisoned").clone()
    }

    /// Puts back an item already held in memory (a retry, or a dead-letter write to try again).
    fn enqueue(&self, item: Item, due: i64) {
        self.push_resident(vec![(item, due)]);
    }

    /// Queues items that are already counted as resident.
    fn push_resident(&self, items: Vec<(Item, i64)>) {
        if items.is_empty() {
            return;
        }
        let now = now_ms();
        let mut q = self.queue.lock().expect("lock poisoned");
        for (item, due) in items {
            if due <= now {
                q.ready.push_back(item);
            } else {
                q.later.push(Reverse(Later { due, item }));
            }
        }
        drop(q);
        self.wake.notify_one();
    }

    /// Admits new work (freshly published, or restored at start), in order: into memory while
    /// there is room and nothing older waits on disk, into the spill file otherwise.
    fn admit(&self, items: Vec<(Item, i64)>) {
        if items.is_empty() {
            return;
        }
        self.counters.pending.fetch_add(items.len() as u64, SeqCst);
        let mut spill = self.spill.lock().expect("lock poisoned");
        let room = if spill.count() == 0 {
            self.max_resident.saturating_sub(self.resident.load(SeqCst)) as usize
        } else {
            0 // keep arrival order: older events are waiting on disk
        };
        let mut memory = items;
        let disk = memory.split_off(room.min(memory.len()));
        if !disk.is_empty() {
            let lines: Vec<Spilled> = disk
                .iter()
                .map(|(i, due)| Spilled {
                    seq: i.ev.seq,
                    pt: i.ev.publish_ms,
                    n: i.attempts,
                    due: *due,
                    ev: i.ev.json.clone(),
                })
                .collect();
            match spill.push(&lines) {
                Ok(()) => {}
                Err(e) => {
                    // Keep them in memory rather than lose track of them (they are in the
                    // event log either way).
                    tracing::error!(subscription = %self.name, error = %e, events = disk.len(), "spilling failed; keeping the events in memory");
                    self.counters.spill_errors.fetch_add(1, SeqCst);
                    memory.extend(disk);
                }
            }
        }
        self.spilled.store(spill.count(), SeqCst);
        self.resident.fetch_add(memory.len() as u64, SeqCst);
        self.push_resident(memory);
    }

    /// Reads spilled events back once at most half of the in-memory room is used.
    fn refill(&self) {
        if self.spilled.load(SeqCst) == 0 {
            return;
        }
        let resident = self.resident.load(SeqCst);
        if resident > self.max_resident / 2 {
            return;
        }
        let mut spill = self.spill.lock().expect("lock poisoned");
        // Bounded: at most the free room and at most 1,000 lines per call.
        let want = (self.max_resident - resident).min(1000) as usize;
        let loaded = match spill.take(want) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(subscription = %self.name, error = %e, "reading the spill file failed; the events come back from the event log at the next start");
                self.counters.spill_errors.fetch_add(1, SeqCst);
                Vec::new()
            }
        };
        self.spilled.store(spill.count(), SeqCst);
        let items: Vec<(Item, i64)> = loaded
            .into_iter()
            .map(|s| {
                (
                    Item {
                        ev: Arc::new(Event::from_raw(s.seq, s.pt, s.ev)),
                        attempts: s.n,
                        last: None,
                    },
                    s.due,
                )
            })
            .collect();
        self.resident.fetch_add(items.len() as u64, SeqCst);
        self.push_resident(items);
    }

    fn finished(&self, n: usize) {
        self.resident.fetch_sub(n as u64, SeqCst);
        if self.spilled.load(SeqCst) > 0 {
            self.wake.notify_one(); // room freed: the dispatcher reads spilled events back
        }
        let before = self.counters.pending.fetch_sub(n as u64, SeqCst);
        assert!(
            before >= n as u64,
            "pending counter underflow on {}",
            self.name
        );
    }

    /// Takes the next batch: due events in order, up to `maxEventsPerBatch` and the preferred
    /// size (an event larger than that goes alone). Also returns events whose TTL ran out and
    /// when the next retry is due.
    fn take_batch(
        &self,
        cfg: &Subscription,
        now: i64,
        ttl_ms: i64,
    ) -> (Vec<Item>, Vec<Item>, Option<i64>) {
        let mut q = self.queue.lock().expect("lock poisoned");
        while q.later.peek().is_some_and(|r| r.0.due <= now) {
            let Reverse(l) = q.later.pop().expect("peeked");
            q.ready.push_back(l.item);
        }
        let (mut batch, mut expired, mut bytes) = (Vec::new(), Vec::new(), 0usize);
        // Bounded loop: at most one batch plus a bounded number of expired events per pass.
        while let Some(front) = q.ready.front() {
            if now - front.ev.publish_ms >= ttl_ms {
                expired.push(q.ready.pop_front().expect("front exists"));
                if expired.len() >= 1000 {
                    break;
                }
                continue;
            }
            let size = front.ev.json.get().len();
            if !batch.is_empty()
                && (batch.len() >= cfg.max_events_per_batch
                    || bytes + size > cfg.preferred_batch_bytes)
            {
                break;
            }
            batch.push(q.ready.pop_front().expect("front exists"));
            bytes += size;
            if bytes >= cfg.preferred_batch_bytes || batch.len() >= cfg.max_events_per_batch {
                break;
            }
        }
        (batch, expired, q.later.peek().map(|r| r.0.due))
    }

    fn metrics(&self) -> Value {
        let mut v = self.counters.json();
        v["name"] = json!(self.name);
        v["inMemory"] = json!(self.resident.load(SeqCst));
        v["spilled"] = json!(self.spilled.load(SeqCst));
        v
    }
}

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "dataVersion")]
    data_version: Option<String>,
}

/// The local Event Grid topic.
pub struct Topic {
    config: Config,
    topic_id: String,
    subs: RwLock<BTreeMap<String, Arc<SubState>>>,
    wal: Wal,
    rate: RateLimit,
    entra: Option<crate::entra::Verifier>,
    next_seq: AtomicU64,
    accepted: AtomicU64,
    http: reqwest::Client,
    /// Validation codes waiting for a GET of their validationUrl.
    validations: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// Serialises subscription changes (and the writes of subscriptions.json).
    mgmt: tokio::sync::Mutex<()>,
    /// Held for the life of the topic (see `open`).
    _lock: std::fs::File,
}

#[derive(Deserialize)]
struct NamedProperties {
    name: String,
    properties: Properties,
}

fn read_subscription_list(path: &Path) -> anyhow::Result<Vec<NamedProperties>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // Either a plain array or the `{"value": [...]}` of `GET /subscriptions`.
    let list = match v {
        Value::Array(_) => v,
        Value::Object(mut o) => o.remove("value").unwrap_or(Value::Null),
        _ => Value::Null,
    };
    serde_json::from_value(list).map_err(|e| {
        anyhow::anyhow!(
            "{}: expected [{{\"name\", \"properties\"}}]: {e}",
            path.display()
        )
    })
}

impl Topic {
    /// Opens (or creates) the topic's state in `config.data_dir`, replays pending deliveries and
    /// starts delivering. Must run inside a tokio runtime.
    pub async fn open(config: Config) -> anyhow::Result<Arc<Topic>> {
        anyhow::ensure!(
            config.time_scale > 0.0 && config.time_scale.is_finite(),
            "--time-scale must be a positive number"
        );
        anyhow::ensure!(
            config.max_in_flight >= 1 && config.max_in_memory >= 1,
            "queue bounds must be at least 1"
        );
        let entra = match &config.entra_public_key {
            Some(k) => Some(crate::entra::Verifier::from_public_key(k)?),
            None => None,
        };
        anyhow::ensure!(
            !config.disable_local_auth || entra.is_some(),
            "with local auth disabled nobody could publish: give the identity stand-in's public key too"
        );
        std::fs::create_dir_all(&config.data_dir)?;
        // Two emulators appending to one log would corrupt it: the first one holds a lock.
        let lock = std::fs::File::create(config.data_dir.join("lock"))?;
        lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "another saldo-eventgrid is using {}",
                config.data_dir.display()
            )
        })?;
        std::fs::create_dir_all(&config.deadletter_dir)?;
        let spill_dir = config.data_dir.join("spill");
        // Spill files are rebuilt from the event log below; an earlier run's are stale.
        let _ = std::fs::remove_dir_all(&spill_dir);
        std::fs::create_dir_all(&spill_dir)?;
        if saldo_publish::sas::signature(&config.key, "probe").is_err() {
            tracing::warn!(
                "the topic key is not base64: aeg-sas-key works, SAS tokens cannot be verified"
            );
        }
        let schema = config.input_schema;
        let mut subs = BTreeMap::new();
        let saved = config.data_dir.join("subscriptions.json");
        let mut lists = Vec::new();
        if saved.exists() {
            lists.push(read_subscription_list(&saved)?);
        }
        if let Some(f) = &config.subscriptions_file {
            lists.push(read_subscription_list(f)?);
        }
        for np in lists.into_iter().flatten() {
            let sub = Subscription::new(&np.name, np.properties, schema)
                .map_err(|e| anyhow::anyhow!("subscription {}: {}", np.name, e.message))?;
            subs.insert(
                np.name.clone(),
                Arc::new(SubState::new(
                    sub,
                    config.max_in_flight,
                    config.max_in_memory,
                    &spill_dir,
                )),
            );
        }
        anyhow::ensure!(
            subs.len() <= MAX_SUBSCRIPTIONS,
            "at most {MAX_SUBSCRIPTIONS} subscriptions"
        );

        let wal_path = config.data_dir.join("events.wal");
        let mut replay = Replay::read(&wal_path)?;
        // Work for subscriptions that no longer exist is gone with them.
        replay.events.retain(|_, ev| {
            ev.targets.retain(|s, _| subs.contains_key(s));
            !ev.targets.is_empty()
        });
        replay.write_compacted(&wal_path)?;
        let wal = Wal::start(wal_path.clone(), config.compact_bytes)?;

        let mut restored = 0usize;
        // Streamed from the log in chunks, so that what does not fit in memory goes to the
        // spill files as it comes.
        let mut per_sub: BTreeMap<String, Vec<(Item, i64)>> = BTreeMap::new();
        let mut k = 0usize;
        replay.for_each_pending(&wal_path, |seq, pe, json| {
            let ev = Arc::new(Event::from_raw(seq, pe.publish_ms, json));
            for (sub, (n, due)) in &pe.targets {
                per_sub.entry(sub.clone()).or_default().push((
                    Item {
                        ev: ev.clone(),
                        attempts: *n,
                        last: None,
                    },
                    *due,
                ));
                restored += 1;
            }
            k += 1;
            if k.is_multiple_of(1024) {
                for (sub, items) in std::mem::take(&mut per_sub) {
                    subs[&sub].admit(items);
                }
            }
            Ok(())
        })?;
        for (sub, items) in per_sub {
            subs[&sub].admit(items);
        }
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            // Event Grid never follows a redirect: only 200-204 is a delivery, so a 3xx is a
            // failed attempt (retried like any other status it does not name).
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("HTTP client: {e}"))?;
        let topic = Arc::new(Topic {
            topic_id: topic_resource_id(&config.topic_name),
            subs: RwLock::new(subs),
            wal,
            entra,
            rate: RateLimit::new(
                config.max_events_per_second,
                config.max_bytes_per_second,
                Instant::now(),
            ),
            next_seq: AtomicU64::new(replay.max_seq + 1),
            accepted: AtomicU64::new(0),
            http,
            validations: Mutex::new(HashMap::new()),
            mgmt: tokio::sync::Mutex::new(()),
            _lock: lock,
            config,
        });
        topic.save_subscriptions()?;
        for sub in topic.subs.read().expect("lock poisoned").values() {
            tokio::spawn(dispatch(topic.clone(), sub.clone()));
        }
        tracing::info!(topic = %topic.topic_id, restored, "topic open");
        Ok(topic)
    }

    pub fn topic_id(&self) -> &str {
        &self.topic_id
    }
    pub fn key(&self) -> &str {
        &self.config.key
    }
    /// What publishing accepts.
    pub fn publish_policy(&self) -> crate::auth::Policy<'_> {
        crate::auth::Policy {
            key: &self.config.key,
            entra: self.entra.as_ref(),
            local_auth: !self.config.disable_local_auth,
        }
    }
    pub fn input_schema(&self) -> InputSchema {
        self.config.input_schema
    }

    fn scaled(&self, d: Duration) -> Duration {
        d.div_f64(self.config.time_scale)
    }
    fn timeout(&self, d: Duration) -> Duration {
        self.scaled(d).max(MIN_TIMEOUT)
    }

    fn save_subscriptions(&self) -> anyhow::Result<()> {
        let value: Vec<Value> = self
            .subs
            .read()
            .expect("lock poisoned")
            .values()
            .map(|s| json!({"name": s.name, "properties": s.cfg().properties}))
            .collect();
        let path = self.config.data_dir.join("subscriptions.json");
        let tmp = path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&json!({ "value": value }))?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    fn all_subs(&self) -> Vec<Arc<SubState>> {
        self.subs
            .read()
            .expect("lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// The publish rate limit: `Err` (429) when a request of `events` events and `bytes`
    /// bytes would exceed the topic's rate.
    pub fn check_rate(&self, events: usize, bytes: usize) -> Result<(), ApiError> {
        self.rate.admit(events, bytes, Instant::now())
    }

    /// Stores accepted events durably, then queues them for every matching subscription.
    /// Returns only once the events are on disk.
    pub async fn publish(&self, events: Vec<Accepted>) -> Result<(), ApiError> {
        let subs = self.all_subs();
        let cfgs: Vec<Arc<Subscription>> = subs.iter().map(|s| s.cfg()).collect();
        let targets: Vec<Vec<usize>> = events
            .iter()
            .map(|e| {
                (0..subs.len())
                    .filter(|&i| cfgs[i].matches(&e.event_type, &e.subject))
                    .collect()
            })
            .collect();
        let now = now_ms();
        let first = self.next_seq.fetch_add(events.len() as u64, SeqCst);
        let mut items = Vec::new();
        let mut heads = Vec::new();
        for (k, (e, t)) in events.into_iter().zip(&targets).enumerate() {
            if t.is_empty() {
                continue; // nobody to deliver to: nothing to keep
            }
            let seq = first + k as u64;
            let subs_t = t
                .iter()
                .map(|&i| Target {
                    sub: subs[i].name.clone(),
                    n: 0,
                    due: now,
                })
                .collect();
            items.push(PubItem {
                seq,
                pt: now,
                subs: subs_t,
                ev: e.json,
            });
            heads.push((e.id, e.data_version, t));
        }
        let count = targets.len() as u64;
        if !items.is_empty() {
            let record = Record::publish(items);
            self.wal
                .append_synced(&record)
                .await
                .map_err(|e| ApiError::internal(format!("the events could not be stored: {e}")))?;
            // Each subscription gets the request's events in one go, so its dispatcher sees
            // them together and can batch them.
            let mut per_sub_items: Vec<Vec<(Item, i64)>> = vec![Vec::new(); subs.len()];
            for (it, (id, data_version, t)) in record.items.into_iter().zip(heads) {
                let ev = Arc::new(Event {
                    seq: it.seq,
                    publish_ms: now,
                    id,
                    data_version,
                    json: it.ev,
                });
                for &i in t {
                    per_sub_items[i].push((
                        Item {
                            ev: ev.clone(),
                            attempts: 0,
                            last: None,
                        },
                        now,
                    ));
                }
            }
            for (i, items) in per_sub_items.into_iter().enumerate() {
                subs[i].admit(items);
            }
        }
        self.accepted.fetch_add(count, SeqCst);
        Ok(())
    }

    /// Creates or updates a subscription. A new endpoint must pass the validation handshake;
    /// `validation_base` is this emulator's base URL as the caller sees it (for validationUrl).
    pub async fn put_subscription(
        self: &Arc<Self>,
        name: &str,
        properties: Properties,
        validation_base: &str,
    ) -> Result<(bool, Value), ApiError> {
        let sub = Subscription::new(name, properties, self.config.input_schema)?;
        // The handshake may take minutes (manual validation), so it runs before the
        // management lock is taken: other subscriptions can be changed meanwhile.
        let current = self
            .subs
            .read()
            .expect("lock poisoned")
            .get(name)
            .map(|s| s.cfg());
        if current.is_none_or(|c| c.endpoint_url != sub.endpoint_url) {
            self.handshake(&sub, validation_base).await?;
        }
        let _guard = self.mgmt.lock().await;
        let existing = self.subs.read().expect("lock poisoned").get(name).cloned();
        if existing.is_none() && self.subs.read().expect("lock poisoned").len() >= MAX_SUBSCRIPTIONS
        {
            return Err(ApiError::bad_request(
                "TooManySubscriptions",
                format!("a topic has at most {MAX_SUBSCRIPTIONS} subscriptions"),
            ));
        }
        let arm = sub.arm(&self.topic_id);
        let created = match existing {
            Some(state) => {
                *state.cfg.write().expect("lock poisoned") = Arc::new(sub);
                state.wake.notify_one();
                false
            }
            None => {
                let state = Arc::new(SubState::new(
                    sub,
                    self.config.max_in_flight,
                    self.config.max_in_memory,
                    &self.config.data_dir.join("spill"),
                ));
                self.subs
                    .write()
                    .expect("lock poisoned")
                    .insert(name.to_string(), state.clone());
                tokio::spawn(dispatch(self.clone(), state));
                true
            }
        };
        self.save_subscriptions()
            .map_err(|e| ApiError::internal(format!("saving subscriptions: {e}")))?;
        tracing::info!(subscription = name, created, "subscription saved");
        Ok((created, arm))
    }

    pub fn get_subscription(&self, name: &str) -> Option<Value> {
        self.subs
            .read()
            .expect("lock poisoned")
            .get(name)
            .map(|s| s.cfg().arm(&self.topic_id))
    }

    pub fn list_subscriptions(&self) -> Value {
        let value: Vec<Value> = self
            .all_subs()
            .iter()
            .map(|s| s.cfg().arm(&self.topic_id))
            .collect();
        json!({ "value": value })
    }

    /// Deletes a subscription and the events still pending for it.
    pub async fn delete_subscription(&self, name: &str) -> Result<(), ApiError> {
        let _guard = self.mgmt.lock().await;
        let state = self
            .subs
            .write()
            .expect("lock poisoned")
            .remove(name)
            .ok_or_else(|| ApiError::not_found(format!("no subscription {name:?}")))?;
        state.closed.store(true, SeqCst);
        state.slots.close();
        state.spill.lock().expect("lock poisoned").remove();
        state.wake.notify_one();
        self.wal.append(&Record::unsubscribe(name)).await;
        self.save_subscriptions()
            .map_err(|e| ApiError::internal(format!("saving subscriptions: {e}")))?;
        tracing::info!(subscription = name, "subscription deleted");
        Ok(())
    }

    pub fn subscription_metrics(&self, name: &str) -> Option<Value> {
        self.subs
            .read()
            .expect("lock poisoned")
            .get(name)
            .map(|s| s.metrics())
    }

    pub fn metrics(&self) -> Value {
        let subs: serde_json::Map<String, Value> = self
            .all_subs()
            .iter()
            .map(|s| (s.name.clone(), s.metrics()))
            .collect();
        let total = |k: &str| {
            subs.values()
                .map(|v| v[k].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        json!({
            "topic": self.topic_id,
            "accepted": self.accepted.load(SeqCst),
            "walFsyncs": self.wal.fsyncs(),
            "delivered": total("delivered"),
            "retried": total("retried"),
            "deadLettered": total("deadLettered"),
            "dropped": total("dropped"),
            "pending": total("pending"),
            "subscriptions": subs,
        })
    }

    /// A GET of a validationUrl: completes a manual handshake. False for an unknown code.
    pub fn validate_manually(&self, code: &str) -> bool {
        match self.validations.lock().expect("lock poisoned").remove(code) {
            Some(tx) => tx.send(()).is_ok(),
            None => false,
        }
    }

    /// The validation handshake: a SubscriptionValidationEvent for the Event Grid schema, an
    /// OPTIONS request (abuse protection) for CloudEvents.
    async fn handshake(&self, sub: &Subscription, base: &str) -> Result<(), ApiError> {
        let fail = |m: String| {
            ApiError::bad_request(
                "SubscriptionValidationFailed",
                format!(
                    "webhook validation handshake failed for {}: {m}",
                    sub.endpoint_url
                ),
            )
        };
        if sub.schema == InputSchema::CloudEvents {
            let origin = "eventgrid.azure.net";
            let resp = self
                .http
                .request(reqwest::Method::OPTIONS, &sub.endpoint_url)
                .header("WebHook-Request-Origin", origin)
                .timeout(self.timeout(policy::HANDSHAKE_TIMEOUT))
                .send()
                .await
                .map_err(|e| {
                    fail(format!(
                        "the endpoint did not answer the OPTIONS request: {e}"
                    ))
                })?;
            let allowed = resp
                .headers()
                .get("WebHook-Allowed-Origin")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if resp.status().as_u16() != 200
                || !(allowed == "*" || allowed.eq_ignore_ascii_case(origin))
            {
                return Err(fail(format!(
                    "the OPTIONS request got {} with WebHook-Allowed-Origin {allowed:?}; expected 200 allowing {origin}",
                    resp.status()
                )));
            }
            return Ok(());
        }
        let code = uuid::Uuid::new_v4().to_string();
        let url = format!("{base}/eventsubscriptions/{}/validate?id={code}", sub.name);
        let (tx, rx) = oneshot::channel();
        self.validations
            .lock()
            .expect("lock poisoned")
            .insert(code.clone(), tx);
        let result = self.run_handshake(sub, &code, &url, rx).await;
        self.validations
            .lock()
            .expect("lock poisoned")
            .remove(&code);
        result.map_err(fail)
    }

    async fn run_handshake(
        &self,
        sub: &Subscription,
        code: &str,
        url: &str,
        rx: oneshot::Receiver<()>,
    ) -> Result<(), String> {
        let event = json!([{
            "id": uuid::Uuid::new_v4().to_string(),
            "topic": self.topic_id,
            "subject": "",
            "data": {"validationCode": code, "validationUrl": url},
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": Utc::now().to_rfc3339(),
            "metadataVersion": "1",
            "dataVersion": "2",
        }]);
        let resp = self
            .http
            .post(&sub.endpoint_url)
            .timeout(self.timeout(policy::HANDSHAKE_TIMEOUT))
            .header("Content-Type", "application/json; charset=utf-8")
            .header("aeg-event-type", "SubscriptionValidation")
            .header("aeg-subscription-name", sub.name.to_uppercase())
            .header("aeg-delivery-count", "0")
            .header("aeg-data-version", "2")
            .header("aeg-metadata-version", "1")
            .body(event.to_string())
            .send()
            .await
            .map_err(|e| format!("the endpoint did not answer: {e}"))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(format!(
                "the endpoint answered {status}; it must answer 200 (202 is not accepted)"
            ));
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        match body.get("validationResponse") {
            Some(Value::String(c)) if c == code => Ok(()),
            Some(other) => Err(format!(
                "validationResponse {other} does not match the validationCode"
            )),
            None => {
                // Manual validation: the endpoint answered 200 and someone must GET the URL.
                let window = self.scaled(policy::MANUAL_VALIDATION_WINDOW);
                match tokio::time::timeout(window, rx).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(format!(
                        "the endpoint answered 200 without a validationResponse and nobody opened the validationUrl within {window:?}"
                    )),
                }
            }
        }
    }
}

/// Waits until `ms` from now or until the subscription is woken.
async fn nap(sub: &SubState, ms: i64) {
    let d = Duration::from_millis(ms.clamp(1, 60_000) as u64);
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = sub.wake.notified() => {}
    }
}

/// One subscription's dispatcher: takes due batches and hands each to a delivery task as soon
/// as a slot is free.
async fn dispatch(topic: Arc<Topic>, sub: Arc<SubState>) {
    loop {
        if sub.closed.load(SeqCst) {
            return;
        }
        let now = now_ms();
        let probation = sub.probation_until.load(SeqCst);
        if probation > now {
            nap(&sub, probation - now).await;
            continue;
        }
        let Ok(permit) = sub.slots.clone().acquire_owned().await else {
            return; // slots closed: the subscription was deleted
        };
        sub.refill();
        let cfg = sub.cfg();
        let ttl_ms = topic.scaled(cfg.ttl).as_millis() as i64;
        let now = now_ms();
        let (batch, expired, next_due) = sub.take_batch(&cfg, now, ttl_ms);
        if !expired.is_empty() {
            let outcome = expired[0].last;
            settle_dead(&topic, &sub, &cfg, expired, "TimeToLiveExceeded", outcome).await;
        }
        if batch.is_empty() {
            drop(permit);
            match next_due {
                Some(due) => nap(&sub, due - now).await,
                None => nap(&sub, 60_000).await,
            }
            continue;
        }
        tokio::spawn(deliver(topic.clone(), sub.clone(), cfg, batch, permit));
    }
}

/// One delivery attempt of one batch, and what follows from its outcome.
async fn deliver(
    topic: Arc<Topic>,
    sub: Arc<SubState>,
    cfg: Arc<Subscription>,
    batch: Vec<Item>,
    _slot: OwnedSemaphorePermit,
) {
    let count = batch.iter().map(|i| i.attempts).max().unwrap_or(0);
    let first = &batch[0].ev;
    let (content_type, body) = match cfg.schema {
        InputSchema::CloudEvents if batch.len() == 1 && cfg.max_events_per_batch == 1 => (
            "application/cloudevents+json; charset=utf-8",
            first.json.get().to_string(),
        ),
        InputSchema::CloudEvents => (
            "application/cloudevents-batch+json; charset=utf-8",
            join(&batch),
        ),
        InputSchema::EventGrid => ("application/json; charset=utf-8", join(&batch)),
    };
    let mut req = topic
        .http
        .post(&cfg.endpoint_url)
        .timeout(topic.timeout(policy::DELIVERY_TIMEOUT))
        .header("Content-Type", content_type)
        .header("aeg-event-type", "Notification")
        .header("aeg-subscription-name", cfg.name.to_uppercase())
        // Choice: the count of earlier attempts, so the first delivery says 0 (as observed on Azure).
        .header("aeg-delivery-count", count.to_string())
        .header("aeg-metadata-version", "1")
        .header("aeg-output-event-id", first.id.clone());
    if cfg.schema == InputSchema::EventGrid {
        req = req.header("aeg-data-version", first.data_version.clone());
    }
    let started = Instant::now();
    let outcome = match req.body(body).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            // Read the (small) answer so the connection can be reused.
            let _ = resp.bytes().await;
            Outcome::Status(status)
        }
        Err(e) if e.is_timeout() => Outcome::TimedOut,
        Err(_) => Outcome::SocketError,
    };
    let success = matches!(outcome, Outcome::Status(s) if policy::is_success(s));
    tracing::info!(
        subscription = %cfg.name,
        events = batch.len(),
        delivery_count = count,
        outcome = policy::outcome_name(outcome),
        status = ?outcome,
        ms = started.elapsed().as_millis() as u64,
        "delivery attempt"
    );
    sub.counters.attempts.fetch_add(1, SeqCst);
    if success {
        sub.failures_in_row.store(0, SeqCst);
    } else {
        sub.counters.failed_attempts.fetch_add(1, SeqCst);
        let failures = sub.failures_in_row.fetch_add(1, SeqCst) + 1;
        if failures >= policy::PROBATION_AFTER_FAILURES
            && let Some(p) = policy::probation(outcome)
        {
            let until = now_ms() + topic.scaled(p).as_millis() as i64;
            sub.probation_until.fetch_max(until, SeqCst);
            tracing::warn!(subscription = %cfg.name, failures, probation_ms = topic.scaled(p).as_millis() as u64, "endpoint on probation");
        }
    }
    // One random number per batch: a batch is retried as a whole.
    let random: f64 = rand::random::<f64>();
    let mut delivered: Vec<Item> = Vec::new();
    // By dead-letter reason, and by (attempts, delay) for retries.
    let mut dead: BTreeMap<&'static str, Vec<Item>> = BTreeMap::new();
    let mut retry: BTreeMap<(u32, u64), Vec<Item>> = BTreeMap::new();
    for mut item in batch {
        item.attempts += 1;
        item.last = Some(outcome);
        match policy::after_attempt(outcome, item.attempts, cfg.max_attempts, random) {
            Next::Delivered => delivered.push(item),
            Next::DeadLetter(reason) => dead.entry(reason).or_default().push(item),
            Next::Retry(after) => retry
                .entry((item.attempts, topic.scaled(after).as_millis() as u64))
                .or_default()
                .push(item),
        }
    }
    if !delivered.is_empty() {
        topic
            .wal
            .append(&Record::done(
                &cfg.name,
                delivered.iter().map(|i| i.ev.seq).collect(),
            ))
            .await;
        sub.counters
            .delivered
            .fetch_add(delivered.len() as u64, SeqCst);
        sub.finished(delivered.len());
    }
    for (reason, items) in dead {
        settle_dead(&topic, &sub, &cfg, items, reason, Some(outcome)).await;
    }
    for ((n, after_ms), items) in retry {
        let due = now_ms() + after_ms as i64;
        topic
            .wal
            .append(&Record::attempt(
                &cfg.name,
                items.iter().map(|i| i.ev.seq).collect(),
                n,
                due,
            ))
            .await;
        sub.counters.retried.fetch_add(items.len() as u64, SeqCst);
        for item in items {
            sub.enqueue(item, due);
        }
    }
}

fn join(batch: &[Item]) -> String {
    let mut s = String::with_capacity(
        batch
            .iter()
            .map(|i| i.ev.json.get().len() + 1)
            .sum::<usize>()
            + 2,
    );
    s.push('[');
    for (k, i) in batch.iter().enumerate() {
        if k > 0 {
            s.push(',');
        }
        s.push_str(i.ev.json.get());
    }
    s.push(']');
    s
}

/// Dead-letters `items` (or drops them when the subscription has no dead-letter destination),
/// then records them as finished.
async fn settle_dead(
    topic: &Arc<Topic>,
    sub: &Arc<SubState>,
    cfg: &Subscription,
    items: Vec<Item>,
    reason: &'static str,
    last: Option<Outcome>,
) {
    let seqs: Vec<u64> = items.iter().map(|i| i.ev.seq).collect();
    match &cfg.dead_letter_container {
        Some(container) => {
            let why = deadletter::Reason {
                reason,
                outcome: match last {
                    Some(o) => policy::outcome_name(o),
                    // Never attempted (its TTL ran out first): held back by probation, or simply
                    // not reached yet.
                    None if sub.probation_until.load(SeqCst) > now_ms() => "Probation",
                    None => "NotAttempted",
                },
                status: match last {
                    Some(Outcome::Status(s)) => s,
                    _ => 0,
                },
                attempt_time: Utc::now(),
            };
            let root = topic.config.deadletter_dir.clone();
            let (container, name) = (container.clone(), cfg.name.clone());
            let evs: Vec<(Arc<Event>, u32)> =
                items.iter().map(|i| (i.ev.clone(), i.attempts)).collect();
            let written = tokio::task::spawn_blocking(move || {
                let letters: Vec<deadletter::Letter<'_>> = evs
                    .iter()
                    .map(|(e, n)| deadletter::Letter {
                        json: e.json.get(),
                        attempts: *n,
                        publish_time: ms_to_time(e.publish_ms),
                    })
                    .collect();
                deadletter::write(&root, &container, &name, &letters, &why)
            })
            .await;
            match written {
                Ok(Ok(path)) => {
                    tracing::warn!(subscription = %cfg.name, events = items.len(), reason, path = %path.display(), "dead-lettered");
                    sub.counters
                        .dead_lettered
                        .fetch_add(items.len() as u64, SeqCst);
                }
                other => {
                    // Not written: keep the events and try again later rather than lose them.
                    tracing::error!(subscription = %cfg.name, result = ?other.map(|r| r.map(|_| ())), "dead-letter write failed; will retry");
                    let due = now_ms() + topic.scaled(Duration::from_secs(10)).as_millis() as i64;
                    for item in items {
                        sub.enqueue(item, due);
                    }
                    return;
                }
            }
        }
        None => {
            tracing::warn!(subscription = %cfg.name, events = items.len(), reason, "dropped (no dead-letter destination)");
            sub.counters.dropped.fetch_add(items.len() as u64, SeqCst);
        }
    }
    topic.wal.append(&Record::done(&cfg.name, seqs)).await;
    sub.finished(items.len());
}
