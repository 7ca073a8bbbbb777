//! `saldo status`: probes every component named in the manifest.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use saldo_stack::Manifest;
use saldo_stack::component::Health;
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    component: String,
    state: String,
    endpoint: String,
    detail: String,
    /// From the manifest: how often `saldo up` restarted it, and how it last died.
    restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_exit: Option<saldo_stack::supervisor::Exit>,
    /// Events this node quarantined (workers only).
    quarantined: usize,
}

async fn probe(health: Health) -> (String, String) {
    match health.probe().await {
        Ok(()) => ("up".into(), String::new()),
        Err(e) => ("down".into(), format!("{e:#}")),
    }
}

async fn row(component: impl Into<String>, endpoint: &str, health: Health) -> Row {
    let (state, detail) = probe(health).await;
    Row {
        component: component.into(),
        state,
        endpoint: endpoint.to_string(),
        detail,
        restarts: 0,
        last_exit: None,
        quarantined: 0,
    }
}

pub async fn status(root: &Path, json: bool) -> Result<ExitCode> {
    let mut m = Manifest::load(root)?;
    let mut rows = Vec::new();
    if let Some(db) = &m.mongodb {
        rows.push(row("mongodb", &db.uri, Health::mongodb(&db.uri)).await);
    }
    if let Some(t) = &m.topic {
        rows.push(row("topic", &t.endpoint, Health::topic(&t.management)).await);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    for n in &m.nodes {
        rows.push(worker_row(&http, n).await);
    }
    // The instances as the hosts report them now (pids change when an instance restarts).
    for n in &mut m.nodes {
        let now = saldo_stack::stack::host_instances(&n.url, &n.master_key).await;
        if !now.is_empty() {
            n.instances = now;
        }
    }
    if let Some(a) = &m.api {
        rows.push(row("api", &a.url, Health::api(&a.url)).await);
    }
    if let Some(s) = &m.spa {
        rows.push(row("spa", &s.url, Health::spa(&s.url)).await);
    }
    for r in &mut rows {
        if let Some(p) = m.processes.iter().find(|p| p.name == r.component) {
            r.restarts = p.restarts;
            r.last_exit = p.last_exit.clone();
        }
    }
    add_quarantined(&m, &mut rows).await;
    let healthy = rows.iter().all(|r| r.state != "down");
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"manifest": m, "components": rows}))?
        );
    } else {
        print_rows(&rows);
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// A region's row. The host tells whether the app is stopped (the demo) or running; the
/// worker's own status endpoint tells whether it is ready.
async fn worker_row(http: &reqwest::Client, n: &saldo_stack::manifest::NodeEntry) -> Row {
    let host: Result<serde_json::Value, _> = async {
        http.get(format!("{}/admin/host/status", n.url))
            .header("x-functions-key", &n.master_key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }
    .await;
    let component = format!("worker-{}", n.region);
    match host {
        Err(e) => Row {
            component,
            state: "down".into(),
            endpoint: n.url.clone(),
            detail: e.to_string(),
            restarts: 0,
            last_exit: None,
            quarantined: 0,
        },
        Ok(v) if v["state"] == "Stopped" => Row {
            component,
            state: "stopped".into(),
            endpoint: n.url.clone(),
            detail: "region stopped".into(),
            restarts: 0,
            last_exit: None,
            quarantined: 0,
        },
        Ok(v) => {
            let mut r = row(component, &n.url, Health::worker(&n.url)).await;
            let instances = saldo_stack::manifest::InstanceEntry::from_host_status(&v);
            let list: Vec<String> = instances
                .iter()
                .map(|i| {
                    let pid = i.pid.map(|p| p.to_string()).unwrap_or("-".into());
                    format!("{} pid {pid}", i.role)
                })
                .collect();
            if !list.is_empty() {
                r.detail = format!("{}{}", r.detail, list.join(", "));
            }
            r
        }
    }
}

/// What each node quarantined (durable, in the database): a count, `saldo quarantine` lists.
async fn add_quarantined(m: &Manifest, rows: &mut [Row]) {
    if m.mongodb.is_some()
        && let Ok(q) = crate::quarantine::entries(m, saldo_store::MAX_PAGE).await
    {
        for (node, entries) in q {
            if let Some(r) = rows
                .iter_mut()
                .find(|r| r.component == format!("worker-{node}"))
            {
                r.quarantined = entries.len();
                if !entries.is_empty() {
                    let sep = if r.detail.is_empty() { "" } else { "; " };
                    r.detail = format!(
                        "{}{sep}{} quarantined (saldo quarantine)",
                        r.detail,
                        entries.len()
                    );
                }
            }
        }
    }
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<24} {:<8} {:<45} {:>8}  {:<40} detail",
        "component", "state", "endpoint", "restarts", "last exit"
    );
    for r in rows {
        let last_exit = r
            .last_exit
            .as_ref()
            .map(|e| format!("{} at {}", e.status, e.at.format("%H:%M:%S")))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:<8} {:<45} {:>8}  {:<40} {}",
            r.component, r.state, r.endpoint, r.restarts, last_exit, r.detail
        );
    }
}
