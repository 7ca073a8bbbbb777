//! How each host process is started: its program, arguments and settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Stack;
use crate::component::{Health, Spec};
use crate::manifest::NodeEntry;

impl Stack {
    /// Environment every process gets: the extra settings of the config (e.g. the Application
    /// Insights connection string passed through by `saldo up`).
    pub(super) fn common_env(&self) -> Vec<(String, String)> {
        self.config
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub(super) fn identity_dir(&self) -> PathBuf {
        self.config.root.join("data").join("identity")
    }

    /// How an app reaches the topic: the key, or (keyless) the managed identity's endpoint, as
    /// App Service gives every app with an identity.
    pub(super) fn topic_settings(&self, settings: &mut BTreeMap<String, String>) {
        if let Some(topic) = &self.manifest.topic {
            settings.insert("SALDO_TOPIC_ENDPOINT".into(), topic.endpoint.clone());
            match &topic.identity {
                Some(i) => {
                    settings.insert("IDENTITY_ENDPOINT".into(), i.endpoint.clone());
                    settings.insert("IDENTITY_HEADER".into(), i.header.clone());
                }
                None => {
                    settings.insert("SALDO_TOPIC_KEY".into(), topic.key.clone());
                }
            }
        }
    }

    pub(super) fn worker_spec(&self, node: &NodeEntry, all: &[NodeEntry]) -> Result<Spec> {
        let c = &self.config;
        let port = node
            .url
            .rsplit(':')
            .next()
            .expect("url has a port")
            .to_string();
        let mongo = self
            .manifest
            .mongodb
            .as_ref()
            .context("workers need mongodb")?;
        let peers: Vec<&str> = all
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| n.url.as_str())
            .collect();
        let mut settings: BTreeMap<String, String> = BTreeMap::from([
            ("SALDO_NODE".into(), node.name.clone()),
            ("SALDO_REGION".into(), node.region.clone()),
            ("SALDO_MONGODB_URI".into(), mongo.uri.clone()),
            ("SALDO_DATABASE".into(), mongo.database.clone()),
            ("SALDO_PUBLIC_URL".into(), node.url.clone()),
            ("SALDO_PEERS".into(), peers.join(",")),
            (
                "SALDO_FLEET".into(),
                all.iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "SALDO_FLEET_KEY".into(),
                self.keys.fleet_function_key.clone(),
            ),
            // Local demo timings: a stopped region's work moves within seconds.
            ("SALDO_TAKEOVER_MS".into(), "3000".into()),
            ("SALDO_LIVENESS_MS".into(), "6000".into()),
            ("SALDO_HEARTBEAT_SCHEDULE".into(), "*/2 * * * * *".into()),
            ("SALDO_SWEEP_SCHEDULE".into(), "* * * * * *".into()),
            ("SALDO_CATCHUP_EVERY".into(), "3".into()),
        ]);
        self.topic_settings(&mut settings);
        settings.extend(c.worker_settings.clone());
        let mut env = self.common_env();
        env.extend(settings);
        Ok(Spec {
            name: format!("worker-{}", node.region),
            program: c.bin("saldo-funchost"),
            args: {
                let mut a =
                    self.host_args(&c.repo.join("functions-host/worker"), &port, "saldo-worker");
                let on = node
                    .url
                    .trim_start_matches("http://")
                    .rsplit_once(':')
                    .map(|(h, _)| h.to_string())
                    .unwrap_or_else(|| c.host.clone());
                set_arg(&mut a, "--host", on);
                a.extend(["--instances".into(), c.instances.clamp(1, 16).to_string()]);
                a
            },
            env,
            cwd: None,
            health: Health::worker(&node.url),
            ready_timeout: Duration::from_secs(45),
            endpoint: node.url.clone(),
        })
    }

    pub(super) fn api_spec(&self, url: &str, port: u16) -> Result<Spec> {
        let c = &self.config;
        let mut settings: BTreeMap<String, String> = BTreeMap::from([
            (
                "SALDO_NODES".into(),
                self.manifest
                    .nodes
                    .iter()
                    .map(|n| n.url.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "SALDO_FLEET_KEY".into(),
                self.keys.fleet_function_key.clone(),
            ),
            // The reconciler: every second, a command no node has recorded after two runs is
            // delivered again, so a purchase whose deliveries all failed completes in seconds.
            ("SALDO_RECONCILE_SCHEDULE".into(), "* * * * * *".into()),
            ("SALDO_RECONCILE_GRACE_RUNS".into(), "2".into()),
        ]);
        if let Some(m) = &self.manifest.mongodb {
            settings.insert("SALDO_MONGODB_URI".into(), m.uri.clone());
            settings.insert("SALDO_DATABASE".into(), m.database.clone());
        }
        self.topic_settings(&mut settings);
        settings.extend(c.api_settings.clone());
        let mut env = self.common_env();
        env.extend(settings);
        Ok(Spec {
            name: "api".into(),
            program: c.bin("saldo-funchost"),
            args: self.host_args(
                &c.repo.join("functions-host/api"),
                &port.to_string(),
                "saldo-api",
            ),
            env,
            cwd: None,
            health: Health::api(url),
            ready_timeout: Duration::from_secs(45),
            endpoint: url.to_string(),
        })
    }

    pub(super) fn host_args(&self, app_dir: &Path, port: &str, handler: &str) -> Vec<String> {
        // (`worker_spec` replaces `--host` with the region's own address.)
        vec![
            "--app-dir".into(),
            app_dir.display().to_string(),
            "--host".into(),
            self.config.host.clone(),
            "--port".into(),
            port.into(),
            "--handler".into(),
            self.config.bin(handler).display().to_string(),
            "--master-key".into(),
            self.keys.master_key.clone(),
            "--function-key".into(),
            self.keys.fleet_function_key.clone(),
        ]
    }

    /// The SPA behind the Static Web Apps CLI, if the SPA is built and the CLI installed.
    pub(super) fn spa_spec(&mut self, api_url: &str) -> Result<Option<Spec>> {
        let c = self.config.clone();
        let dist = c.repo.join("frontend/dist");
        let swa = c.repo.join("frontend/node_modules/.bin/swa");
        if !dist.join("index.html").is_file() || !swa.is_file() {
            if c.require_all {
                bail!(
                    "the SPA is not built ({} or {} missing): run ./dev up",
                    dist.display(),
                    swa.display()
                );
            }
            eprintln!("saldo: skipping the SPA (not built; `./dev up` builds it)");
            return Ok(None);
        }
        let port = self.port("spa", c.ports.spa)?;
        let url = format!("http://{}:{port}", c.host);
        let mut env = self.common_env();
        // The CLI must not look for updates: this machine has no internet. (Its stdin is
        // /dev/null: on a taken port it would otherwise wait for an answer forever.)
        env.push(("NO_UPDATE_NOTIFIER".into(), "1".into()));
        Ok(Some(Spec {
            name: "spa".into(),
            program: swa,
            args: vec![
                "start".into(),
                dist.display().to_string(),
                // Without this the CLI looks for the config in its working folder only, and the
                // role rules would silently be off.
                "--swa-config-location".into(),
                dist.display().to_string(),
                "--api-devserver-url".into(),
                api_url.into(),
                "--host".into(),
                c.host.clone(),
                "--port".into(),
                port.to_string(),
            ],
            env,
            cwd: Some(c.repo.join("frontend")),
            health: Health::spa(&url),
            ready_timeout: Duration::from_secs(60),
            endpoint: url,
        }))
    }
}

/// Replaces the value of `flag` in `args`.
fn set_arg(args: &mut [String], flag: &str, value: String) {
    if let Some(i) = args.iter().position(|a| a == flag)
        && let Some(v) = args.get_mut(i + 1)
    {
        *v = value;
    }
}
