//! The topic: accepting events (durably, at Azure's rate) and managing subscriptions. Its
//! parts: [`crate::config`], `queue` (a subscription's bounded queue and spill file),
//! `dispatch` (delivery, retries, dead-lettering), `handshake`.
//!
//! Delivery design: every subscription has its own bounded queue (events due now, plus a heap
//! of retries ordered by due time), its own dispatcher task and a fixed number of delivery
//! slots (a semaphore). A slow or stopped endpoint only fills its own queue and slots, so it
//! never delays deliveries to the others. Event Grid never waits to fill a batch: a dispatcher
//! sends whatever is due as soon as a slot is free.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::config::{Config, MIN_TIMEOUT, topic_resource_id};
use crate::dispatch::dispatch;
use crate::error::ApiError;
use crate::queue::{Event, Item, SubState, now_ms};
use crate::rate::RateLimit;
use crate::schema::{Accepted, InputSchema};
use crate::subscription::{MAX_SUBSCRIPTIONS, Properties, Subscription};
use crate::wal::{PubItem, Record, Replay, Target, Wal};

/// The local Event Grid topic.
pub struct Topic {
    pub(crate) config: Config,
    pub(crate) topic_id: String,
    pub(crate) subs: RwLock<BTreeMap<String, Arc<SubState>>>,
    pub(crate) wal: Wal,
    pub(crate) rate: RateLimit,
    pub(crate) entra: Option<crate::entra::Verifier>,
    pub(crate) next_seq: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) http: reqwest::Client,
    /// Validation codes waiting for a GET of their validationUrl.
    pub(crate) validations: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// Serialises subscription changes (and the writes of subscriptions.json).
    pub(crate) mgmt: tokio::sync::Mutex<()>,
    /// Held for the life of the topic (see `open`).
    pub(crate) _lock: std::fs::File,
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

/// Refuses a configuration the topic cannot run with; the Entra verifier when one is given.
fn check_config(config: &Config) -> anyhow::Result<Option<crate::entra::Verifier>> {
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
    Ok(entra)
}

/// Creates the data and dead-letter folders, takes the data folder's lock (held for the life of
/// the topic) and empties the spill folder, whose path it returns.
fn claim_data_dir(config: &Config) -> anyhow::Result<(std::fs::File, PathBuf)> {
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
    // Spill files are rebuilt from the event log (`replay_pending`); an earlier run's are stale.
    let _ = std::fs::remove_dir_all(&spill_dir);
    std::fs::create_dir_all(&spill_dir)?;
    Ok((lock, spill_dir))
}

/// The subscriptions saved by the last run, then those of `--subscriptions-file`, validated.
fn load_subscriptions(
    config: &Config,
    spill_dir: &Path,
) -> anyhow::Result<BTreeMap<String, Arc<SubState>>> {
    let mut subs = BTreeMap::new();
    let saved = config.data_dir.join("subscriptions.json");
    let mut lists = Vec::new();
    if saved.exists() {
        lists.push(read_subscription_list(&saved)?);
    }
    if let Some(f) = &config.subscriptions_file {
        lists.push(read_subscription_list(f)?);
    }
    for named in lists.into_iter().flatten() {
        let sub = Subscription::new(&named.name, named.properties, config.input_schema)
            .map_err(|e| anyhow::anyhow!("subscription {}: {}", named.name, e.message))?;
        subs.insert(
            named.name.clone(),
            Arc::new(SubState::new(
                sub,
                config.max_in_flight,
                config.max_in_memory,
                spill_dir,
            )),
        );
    }
    anyhow::ensure!(
        subs.len() <= MAX_SUBSCRIPTIONS,
        "at most {MAX_SUBSCRIPTIONS} subscriptions"
    );
    Ok(subs)
}

/// Compacts the event log to the work still pending for `subs`, starts its writer, and queues
/// that work again. Returns the writer, the highest sequence in the log and how many deliveries
/// were restored.
fn replay_pending(
    config: &Config,
    subs: &BTreeMap<String, Arc<SubState>>,
) -> anyhow::Result<(Wal, u64, usize)> {
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
    replay.for_each_pending(&wal_path, |seq, pending, json| {
        let targets: Vec<&SubState> = pending.targets.keys().map(|s| &*subs[s]).collect();
        let ev = Arc::new(Event::restored(seq, pending.publish_ms, json, &targets));
        for (sub, due) in &pending.targets {
            per_sub.entry(sub.clone()).or_default().push((
                Item {
                    ev: ev.clone(),
                    attempts: due.attempts,
                    last: None,
                },
                due.at,
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
    Ok((wal, replay.max_seq, restored))
}

/// The client every delivery goes out on.
fn delivery_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        // Event Grid never follows a redirect: only 200-204 is a delivery, so a 3xx is a
        // failed attempt (retried like any other status it does not name).
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| anyhow::anyhow!("HTTP client: {e}"))
}

impl Topic {
    /// Opens (or creates) the topic's state in `config.data_dir`, replays pending deliveries and
    /// starts delivering. Must run inside a tokio runtime.
    pub async fn open(config: Config) -> anyhow::Result<Arc<Topic>> {
        let entra = check_config(&config)?;
        let (lock, spill_dir) = claim_data_dir(&config)?;
        if saldo_publish::sas::signature(&config.key, "probe").is_err() {
            tracing::warn!(
                "the topic key is not base64: aeg-sas-key works, SAS tokens cannot be verified"
            );
        }
        let subs = load_subscriptions(&config, &spill_dir)?;
        let (wal, max_seq, restored) = replay_pending(&config, &subs)?;
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
            next_seq: AtomicU64::new(max_seq + 1),
            accepted: AtomicU64::new(0),
            http: delivery_client()?,
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

    pub(crate) fn scaled(&self, d: Duration) -> Duration {
        d.div_f64(self.config.time_scale)
    }
    pub(crate) fn timeout(&self, d: Duration) -> Duration {
        self.scaled(d).max(MIN_TIMEOUT)
    }

    pub(crate) fn save_subscriptions(&self) -> anyhow::Result<()> {
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

    pub(crate) fn all_subs(&self) -> Vec<Arc<SubState>> {
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
            let item_targets = t
                .iter()
                .map(|&i| Target {
                    sub: subs[i].name.clone(),
                    attempts: 0,
                    due: now,
                })
                .collect();
            items.push(PubItem {
                seq,
                publish_ms: now,
                targets: item_targets,
                event: e.json,
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
                    json: it.event,
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
            "walQueued": self.wal.queued(),
            "delivered": total("delivered"),
            "retried": total("retried"),
            "deadLettered": total("deadLettered"),
            "dropped": total("dropped"),
            "pending": total("pending"),
            "unreadable": total("unreadable"),
            "subscriptions": subs,
        })
    }
}
