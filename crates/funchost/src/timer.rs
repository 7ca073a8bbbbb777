//! Timer triggers: one task per timer function, firing `POST /<FunctionName>` on its NCRONTAB
//! schedule. As in Azure: at most one run of a function at a time (a tick that comes while the
//! previous run is still going is skipped), no retries, failures logged. While the app is
//! stopped, ticks are skipped. Timers fire at the timer instance when the host runs one
//! (`--instances` ≥ 2), which receives no HTTP traffic, as on Flex Consumption.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::config::{Function, Trigger};
use crate::invoke::{TimerStatus, timer_payload};
use crate::schedule::Ncrontab;
use crate::server::{Host, call_function};

/// Spawns a task per timer function. Panics if settings were not resolved (a programming error:
/// `main` resolves them before starting the host).
pub fn spawn_timers(host: &Arc<Host>) -> Vec<tokio::task::JoinHandle<()>> {
    host.app
        .functions
        .iter()
        .filter_map(|f| match &f.trigger {
            Trigger::Timer(t) => {
                let schedule = t
                    .schedule
                    .clone()
                    .expect("timer schedules are resolved before start");
                Some(tokio::spawn(run(
                    host.clone(),
                    f.clone(),
                    t.binding.clone(),
                    schedule,
                    t.run_on_startup,
                )))
            }
            Trigger::Http(_) => None,
        })
        .collect()
}

async fn run(
    host: Arc<Host>,
    f: Function,
    binding: String,
    schedule: Ncrontab,
    run_on_startup: bool,
) {
    let busy = Arc::new(AtomicBool::new(false));
    let mut last: Option<DateTime<Utc>> = None;
    let Some(mut next) = schedule.next_after(Utc::now()) else {
        tracing::warn!(function = %f.name, schedule = %schedule.text, "schedule never fires");
        return;
    };
    tracing::info!(function = %f.name, schedule = %schedule.text, next = %next, "timer armed");
    let mut first = run_on_startup;
    loop {
        if !first {
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
        }
        let now = Utc::now();
        // `max` guards against the wall clock reading a hair before `next` after the sleep,
        // which would otherwise yield `next` again and fire twice.
        let due = if first { now } else { next };
        let Some(following) = schedule.next_after(now.max(next)) else {
            return;
        };
        // Past due: we woke up after the following occurrence was already due (a slow machine
        // or a long pause), i.e. at least one occurrence was missed.
        let past_due = !first && schedule.next_after(next).is_some_and(|n| n <= now);
        first = false;
        if host.timer_port().is_none() {
            host.ticks_skipped.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(function = %f.name, "timer tick skipped: app stopped or handler restarting");
        } else if busy.swap(true, Ordering::SeqCst) {
            tracing::warn!(function = %f.name, "timer tick skipped: the previous run is still going");
        } else {
            let status = TimerStatus {
                last,
                next: following,
                last_updated: now,
                is_past_due: past_due,
            };
            let (host, name, binding, busy) =
                (host.clone(), f.name.clone(), binding.clone(), busy.clone());
            tokio::spawn(async move {
                fire(&host, &name, &binding, &status).await;
                busy.store(false, Ordering::SeqCst);
            });
            last = Some(due);
        }
        next = following;
    }
}

async fn fire(host: &Host, function: &str, binding: &str, status: &TimerStatus) {
    let Some(port) = host.timer_port() else {
        return;
    };
    let id = uuid::Uuid::new_v4();
    let payload = timer_payload(function, binding, status, Utc::now(), uuid::Uuid::new_v4());
    let started = Instant::now();
    let code = match call_function(host, port, function, &payload, id).await {
        Ok(_) => 200,
        Err(resp) => resp.status().as_u16(),
    };
    let ms = started.elapsed().as_millis() as u64;
    if code == 200 {
        tracing::info!(function, status = code, ms, invocation_id = %id, "invocation");
    } else {
        // Not retried, as in Azure: the next tick is the next chance.
        tracing::error!(function, status = code, ms, invocation_id = %id, "timer invocation failed");
    }
}
