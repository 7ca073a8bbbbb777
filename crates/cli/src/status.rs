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
}

async fn probe(health: Health) -> (String, String) {
    match health.probe().await {
        Ok(()) => ("up".into(), String::new()),
        Err(e) => ("down".into(), format!("{e:#}")),
    }
}

pub async fn status(root: &Path, json: bool) -> Result<ExitCode> {
    let m = Manifest::load(root)?;
    let mut rows = Vec::new();
    if let Some(db) = &m.mongodb {
        let (state, detail) = probe(Health::Mongo {
            uri: db.uri.clone(),
        })
        .await;
        rows.push(Row {
            component: "mongodb".into(),
            state,
            endpoint: db.uri.clone(),
            detail,
        });
    }
    if let Some(t) = &m.topic {
        let (state, detail) = probe(Health::Http {
            url: format!("{}/healthz", t.management),
            header: None,
        })
        .await;
        rows.push(Row {
            component: "topic".into(),
            state,
            endpoint: t.endpoint.clone(),
            detail,
        });
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    for n in &m.nodes {
        // The host tells whether the app is stopped (the demo) or running; the worker's own
        // status endpoint tells whether it is ready.
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
        let (state, detail) = match host {
            Err(e) => ("down".to_string(), e.to_string()),
            Ok(v) if v["state"] == "Stopped" => {
                ("stopped".to_string(), "region stopped".to_string())
            }
            Ok(_) => {
                probe(Health::Http {
                    url: format!("{}/api/status", n.url),
                    header: None,
                })
                .await
            }
        };
        rows.push(Row {
            component: format!("worker-{}", n.region),
            state,
            endpoint: n.url.clone(),
            detail,
        });
    }
    if let Some(a) = &m.api {
        let (state, detail) = probe(Health::Http {
            url: format!("{}/api/openapi.json", a.url),
            header: None,
        })
        .await;
        rows.push(Row {
            component: "api".into(),
            state,
            endpoint: a.url.clone(),
            detail,
        });
    }
    if let Some(s) = &m.spa {
        let (state, detail) = probe(Health::Http {
            url: format!("{}/", s.url),
            header: None,
        })
        .await;
        rows.push(Row {
            component: "spa".into(),
            state,
            endpoint: s.url.clone(),
            detail,
        });
    }
    let healthy = rows.iter().all(|r| r.state != "down");
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"manifest": m, "components": rows}))?
        );
    } else {
        println!(
            "{:<24} {:<8} {:<45} detail",
            "component", "state", "endpoint"
        );
        for r in &rows {
            println!(
                "{:<24} {:<8} {:<45} {}",
                r.component, r.state, r.endpoint, r.detail
            );
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
