//! `saldo quarantine`: the events each node refused to take (unknown type, another data
//! version, malformed), kept durably in `quarantine_<node>` with the reason, while the rest of
//! their delivery was taken (see `saldo_worker::intake`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use saldo_stack::Manifest;
use saldo_store::{MongoStore, Quarantined, Store};

/// The newest `limit` quarantined events of every node of the stack, newest first per node.
pub async fn entries(m: &Manifest, limit: usize) -> Result<Vec<(String, Vec<Quarantined>)>> {
    let db = m.mongodb.as_ref().context("the stack runs no database")?;
    let mut out = Vec::new();
    for n in &m.nodes {
        let store = MongoStore::connect(&db.uri, &db.database, &n.name).await?;
        let q = tokio::time::timeout(Duration::from_secs(10), store.quarantined(limit))
            .await
            .with_context(|| format!("reading the quarantine of {} timed out", n.name))??;
        out.push((n.name.clone(), q));
    }
    Ok(out)
}

pub async fn list(root: &std::path::Path, limit: usize, json: bool) -> Result<ExitCode> {
    let m = Manifest::load(root)?;
    let all = entries(&m, limit).await?;
    if json {
        let v: serde_json::Map<String, serde_json::Value> = all
            .iter()
            .map(|(n, q)| (n.clone(), serde_json::to_value(q).unwrap_or_default()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let total: usize = all.iter().map(|(_, q)| q.len()).sum();
    if total == 0 {
        println!("saldo: no node has quarantined anything");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<25} {:<38} {:<22} {:<8} reason",
        "node", "at (UTC)", "event id", "type", "version"
    );
    for (node, q) in &all {
        for e in q {
            let at = chrono::DateTime::from_timestamp_millis(e.at_ms)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
                .unwrap_or_default();
            println!(
                "{:<16} {:<25} {:<38} {:<22} {:<8} {}",
                node,
                at,
                e.event_id.as_deref().unwrap_or("?"),
                e.event_type.as_deref().unwrap_or("?"),
                e.data_version.as_deref().unwrap_or("?"),
                e.reason
            );
        }
    }
    println!("({total} quarantined; `saldo quarantine --json` prints each raw event)");
    Ok(ExitCode::SUCCESS)
}
