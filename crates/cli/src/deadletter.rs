//! `saldo deadletter list|replay`: the events Event Grid gave up on, and a way to send them again.
//!
//! Event Grid writes each dead-lettered batch as a JSON array of the original events with delivery
//! facts added (`deadLetterReason`, `deliveryAttempts`, ...). Replaying strips those facts and
//! publishes the events to the topic again. That is safe because every worker recognises an event
//! id it has already recorded: a replay can repair a region that missed events, never double-apply.
//! A replayed file moves to `<deadletter>/replayed/`, so replaying twice does nothing new.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use saldo_core::events::EventGridEvent;
use saldo_publish::Publisher;
use saldo_stack::Manifest;
use serde_json::Value;

/// Fields Event Grid adds to a dead-lettered event; not part of the event itself.
const DELIVERY_FACTS: [&str; 6] = [
    "deadLetterReason",
    "deliveryAttempts",
    "lastDeliveryOutcome",
    "lastHttpStatusCode",
    "publishTime",
    "lastDeliveryAttemptTime",
];
/// Events per publish request (Event Grid takes up to 5,000; small batches keep requests small).
const BATCH: usize = 100;

#[derive(clap::Subcommand)]
pub enum Action {
    /// List dead-lettered events with their reasons.
    List,
    /// Publish every dead-lettered event to the topic again.
    Replay,
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let path = e?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "replayed") {
                continue;
            }
            files(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "json") {
            out.push(path);
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON array of events", path.display()))
}

pub async fn run(root: &Path, action: Action) -> Result<ExitCode> {
    let m = Manifest::load(root)?;
    let topic = m.topic.as_ref().context("the stack runs no topic")?;
    let mut found = Vec::new();
    files(&topic.deadletter, &mut found)?;
    found.sort();
    match action {
        Action::List => {
            let mut n = 0;
            for f in &found {
                for e in read(f)? {
                    n += 1;
                    println!(
                        "{}  {}  {}  {}  ({})",
                        e["id"].as_str().unwrap_or("?"),
                        e["eventType"].as_str().unwrap_or("?"),
                        e["deadLetterReason"].as_str().unwrap_or("?"),
                        e["lastHttpStatusCode"],
                        f.strip_prefix(&topic.deadletter).unwrap_or(f).display()
                    );
                }
            }
            println!("{n} dead-lettered events in {} files", found.len());
        }
        Action::Replay => {
            let publisher = Publisher::new(topic.endpoint.clone(), topic.publish_auth());
            let mut n = 0;
            for f in &found {
                let mut events: Vec<EventGridEvent<Value>> = Vec::new();
                for mut e in read(f)? {
                    if let Some(obj) = e.as_object_mut() {
                        for k in DELIVERY_FACTS {
                            obj.remove(k);
                        }
                    }
                    events.push(
                        serde_json::from_value(e)
                            .with_context(|| format!("an event in {}", f.display()))?,
                    );
                }
                for chunk in events.chunks(BATCH) {
                    publisher
                        .publish(chunk)
                        .await
                        .with_context(|| format!("replaying {}", f.display()))?;
                }
                n += events.len();
                let rel = f.strip_prefix(&topic.deadletter).unwrap_or(f);
                let dest = topic.deadletter.join("replayed").join(rel);
                std::fs::create_dir_all(dest.parent().expect("has a parent"))?;
                std::fs::rename(f, &dest)?;
            }
            println!("replayed {n} events from {} files", found.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}
