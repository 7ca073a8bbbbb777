//! One subscription's in-memory state: its bounded queue (events due now, plus a heap of
//! retries ordered by due time), its spill file beyond the bound, its delivery slots and counters.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::policy::Outcome;
use crate::spill::{SpillFile, Spilled};
use crate::subscription::Subscription;

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A publish time as a date. Every `publish_ms` an [`Event`] holds is in range (taken from our
/// clock, or checked by [`Event::from_raw`]), so the fallback is never reached.
pub(crate) fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
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
    ///
    /// What we stored was accepted, so it reads back; if it does not (a damaged file), the event
    /// is still delivered as it is (it was acknowledged, and the subscriber decides), but the
    /// second value says what is wrong, for the caller to log and count (`unreadable`): an event
    /// without a string `id`, or a publish time out of range (then it is now, not 1970).
    pub(crate) fn from_raw(
        seq: u64,
        publish_ms: i64,
        json: Box<RawValue>,
    ) -> (Self, Option<String>) {
        let mut problems = Vec::new();
        let head = match serde_json::from_str::<Head>(json.get()) {
            Ok(h) => h,
            Err(e) => {
                problems.push(format!("unreadable event head: {e}"));
                Head {
                    id: None,
                    data_version: None,
                }
            }
        };
        if head.id.is_none() && problems.is_empty() {
            problems.push("the event has no id".to_string());
        }
        let publish_ms = if DateTime::from_timestamp_millis(publish_ms).is_some() {
            publish_ms
        } else {
            problems.push(format!("publish time {publish_ms} ms is out of range"));
            now_ms()
        };
        let event = Self {
            seq,
            publish_ms,
            id: head.id.unwrap_or_default(),
            // Absent in the CloudEvents schema: no header then, as in Azure.
            data_version: head.data_version.unwrap_or_default(),
            json,
        };
        (event, (!problems.is_empty()).then(|| problems.join("; ")))
    }

    /// [`Event::from_raw`], logging and counting on `sub` what is wrong with a stored event.
    pub(crate) fn restored(
        seq: u64,
        publish_ms: i64,
        json: Box<RawValue>,
        subs: &[&SubState],
    ) -> Self {
        let (event, problem) = Self::from_raw(seq, publish_ms, json);
        if let Some(why) = problem {
            tracing::error!(seq, %why, "a stored event reads back damaged; delivering it as it is");
            for s in subs {
                s.counters.unreadable.fetch_add(1, SeqCst);
            }
        }
        event
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) ev: Arc<Event>,
    /// Attempts made so far (the next attempt's `aeg-delivery-count`).
    pub(crate) attempts: u32,
    pub(crate) last: Option<Outcome>,
}

pub(crate) struct Later {
    pub(crate) due: i64,
    pub(crate) item: Item,
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
pub(crate) struct Queue {
    pub(crate) ready: VecDeque<Item>,
    pub(crate) later: BinaryHeap<Reverse<Later>>,
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
    /// Stored events that read back damaged (see [`Event::from_raw`]).
    pub unreadable: AtomicU64,
}

impl Counters {
    pub(crate) fn json(&self) -> Value {
        json!({
            "delivered": self.delivered.load(SeqCst),
            "retried": self.retried.load(SeqCst),
            "deadLettered": self.dead_lettered.load(SeqCst),
            "dropped": self.dropped.load(SeqCst),
            "pending": self.pending.load(SeqCst),
            "attempts": self.attempts.load(SeqCst),
            "failedAttempts": self.failed_attempts.load(SeqCst),
            "spillErrors": self.spill_errors.load(SeqCst),
            "unreadable": self.unreadable.load(SeqCst),
        })
    }
}

pub(crate) struct SubState {
    pub(crate) name: String,
    pub(crate) cfg: RwLock<Arc<Subscription>>,
    pub(crate) queue: Mutex<Queue>,
    pub(crate) wake: Notify,
    pub(crate) closed: AtomicBool,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) counters: Counters,
    /// Until when (ms since the epoch) the endpoint is on probation.
    pub(crate) probation_until: AtomicI64,
    pub(crate) failures_in_row: AtomicU32,
    /// Events held in memory: queued, waiting for a retry or in flight. At most `max_resident`
    /// (beyond it events are spilled), so a stopped subscriber costs bounded memory.
    pub(crate) resident: AtomicU64,
    pub(crate) max_resident: u64,
    /// The backlog beyond `max_resident`. Lock order: `spill`, then `queue`.
    pub(crate) spill: Mutex<SpillFile>,
    /// Mirror of the spill file's count, read without its lock.
    pub(crate) spilled: AtomicU64,
}

impl SubState {
    pub(crate) fn new(
        sub: Subscription,
        slots: usize,
        max_resident: usize,
        spill_dir: &Path,
    ) -> Self {
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

    pub(crate) fn cfg(&self) -> Arc<Subscription> {
        self.cfg.read().expect("lock poisoned").clone()
    }

    /// Puts back an item already held in memory (a retry, or a dead-letter write to try again).
    pub(crate) fn enqueue(&self, item: Item, due: i64) {
        self.push_resident(vec![(item, due)]);
    }

    /// Queues items that are already counted as resident.
    pub(crate) fn push_resident(&self, items: Vec<(Item, i64)>) {
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
    pub(crate) fn admit(&self, items: Vec<(Item, i64)>) {
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
                    publish_ms: i.ev.publish_ms,
                    attempts: i.attempts,
                    due: *due,
                    event: i.ev.json.clone(),
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
    pub(crate) fn refill(&self) {
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
                        ev: Arc::new(Event::restored(s.seq, s.publish_ms, s.event, &[self])),
                        attempts: s.attempts,
                        last: None,
                    },
                    s.due,
                )
            })
            .collect();
        self.resident.fetch_add(items.len() as u64, SeqCst);
        self.push_resident(items);
    }

    pub(crate) fn finished(&self, n: usize) {
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
    pub(crate) fn take_batch(
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

    pub(crate) fn metrics(&self) -> Value {
        let mut v = self.counters.json();
        v["name"] = json!(self.name);
        v["inMemory"] = json!(self.resident.load(SeqCst));
        v["spilled"] = json!(self.spilled.load(SeqCst));
        // How long deliveries are still held back (0: not on probation).
        v["probationMs"] = json!((self.probation_until.load(SeqCst) - now_ms()).max(0));
        v
    }
}

#[derive(Deserialize)]
pub(crate) struct Head {
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default, rename = "dataVersion")]
    pub(crate) data_version: Option<String>,
}

#[cfg(test)]
mod stored_event_tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn a_stored_event_reads_back_with_its_id_and_time() {
        let (e, problem) = Event::from_raw(1, 1_000, raw(r#"{"id": "a", "dataVersion": "1.0"}"#));
        assert_eq!(problem, None);
        assert_eq!((e.id.as_str(), e.data_version.as_str()), ("a", "1.0"));
        assert_eq!(ms_to_time(e.publish_ms).timestamp_millis(), 1_000);
        // The CloudEvents schema has no dataVersion: not a problem.
        assert_eq!(Event::from_raw(1, 1_000, raw(r#"{"id": "a"}"#)).1, None);
    }

    #[test]
    fn a_damaged_stored_event_is_reported_not_silently_given_an_empty_id_or_1970() {
        let (e, problem) = Event::from_raw(1, 1_000, raw(r#"{"id": 7}"#));
        assert!(problem.unwrap().contains("unreadable event head"));
        assert_eq!(e.id, "");
        let (_, problem) = Event::from_raw(1, 1_000, raw(r#"{"subject": "s"}"#));
        assert_eq!(problem.as_deref(), Some("the event has no id"));
        let before = now_ms();
        let (e, problem) = Event::from_raw(1, i64::MAX, raw(r#"{"id": "a"}"#));
        assert!(problem.unwrap().contains("out of range"));
        assert!(e.publish_ms >= before, "the publish time is now, not 1970");
    }
}
