//! Delivery: one dispatcher task per subscription hands due batches to delivery tasks as slots
//! free up; each attempt's outcome is retried, delivered, dead-lettered or dropped as Event Grid
//! does (`policy.rs`), and recorded in the WAL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::OwnedSemaphorePermit;

use crate::deadletter;
use crate::policy::{self, Next, Outcome};
use crate::queue::{Event, Item, SubState, ms_to_time, now_ms};
use crate::schema::InputSchema;
use crate::subscription::Subscription;
use crate::topic::Topic;
use crate::wal::Record;

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
pub(crate) async fn dispatch(topic: Arc<Topic>, sub: Arc<SubState>) {
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
    let outcome = attempt(&topic, &cfg, &batch, count).await;
    count_attempt(&topic, &sub, &cfg, outcome);
    settle(&topic, &sub, &cfg, batch, outcome).await;
}

/// The body of one delivery and its content type, as the subscription's schema asks.
fn request_body(cfg: &Subscription, batch: &[Item]) -> (&'static str, String) {
    match cfg.schema {
        InputSchema::CloudEvents if batch.len() == 1 && cfg.max_events_per_batch == 1 => (
            "application/cloudevents+json; charset=utf-8",
            batch[0].ev.json.get().to_string(),
        ),
        InputSchema::CloudEvents => (
            "application/cloudevents-batch+json; charset=utf-8",
            join(batch),
        ),
        InputSchema::EventGrid => ("application/json; charset=utf-8", join(batch)),
    }
}

/// POSTs the batch to the endpoint once (`count` earlier attempts) and says how it went.
async fn attempt(topic: &Topic, cfg: &Subscription, batch: &[Item], count: u32) -> Outcome {
    let first = &batch[0].ev;
    let (content_type, body) = request_body(cfg, batch);
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
    tracing::info!(
        subscription = %cfg.name,
        events = batch.len(),
        delivery_count = count,
        outcome = policy::outcome_name(outcome),
        status = ?outcome,
        ms = started.elapsed().as_millis() as u64,
        "delivery attempt"
    );
    outcome
}

/// Counts the attempt, and puts the endpoint on probation after enough failures in a row.
fn count_attempt(topic: &Topic, sub: &SubState, cfg: &Subscription, outcome: Outcome) {
    let success = matches!(outcome, Outcome::Status(s) if policy::is_success(s));
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
}

/// What follows from an attempt's outcome for each of the batch's events: delivered (recorded
/// as done), dead-lettered or dropped, or queued again for a retry (recorded with its due time).
async fn settle(
    topic: &Arc<Topic>,
    sub: &Arc<SubState>,
    cfg: &Subscription,
    batch: Vec<Item>,
    outcome: Outcome,
) {
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
        settle_dead(topic, sub, cfg, items, reason, Some(outcome)).await;
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
