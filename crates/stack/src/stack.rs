//! Starting and stopping the whole stack, in dependency order:
//!
//! 1. `mongodb`  SecantusDB, the stand-in for Cosmos DB for MongoDB.
//! 2. `topic`    the Event Grid emulator.
//! 3. `worker-<region>`  one Functions host stand-in per region, each running `saldo-worker`.
//!    Then one Event Grid subscription per region, pointing at that region's webhook.
//! 4. `api`      a Functions host stand-in running `saldo-api`; then the demo catalogue is seeded.
//! 5. `spa`      the SPA behind the Static Web Apps CLI.
//!
//! To add a component: write a `fn <name>_spec(..) -> Spec` below and call `self.launch(spec)` at
//! the right place in [`Stack::start`]; add its entry to the [`Manifest`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::component::{Health, Running, Spec};
use crate::config::{Component, StackConfig};
use crate::keys::Keys;
use crate::manifest::{
    ApiEntry, IdentityEntry, Manifest, MongoEntry, NodeEntry, ProcessEntry, SpaEntry, TopicEntry,
};
use crate::ports;
use crate::supervisor::Life;
use crate::venv::Venv;

pub const DATABASE: &str = "saldo";
/// The Event Grid subscription's dead-letter container (a folder under `<root>/deadletter`).
pub const DEADLETTER_CONTAINER: &str = "deadletter";

/// The ports a stack used last time, reused when still free.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct RememberedPorts {
    #[serde(default)]
    ports: BTreeMap<String, u16>,
}

/// A running stack. Dropping it kills every component (tests rely on that when they panic);
/// [`Stack::stop`] stops them gracefully.
pub struct Stack {
    pub config: StackConfig,
    manifest: Manifest,
    running: Vec<Running>,
    /// The supervision state of each component, by name.
    lives: BTreeMap<String, Life>,
    keys: Keys,
    remembered: RememberedPorts,
    lock: Option<PathBuf>,
}

/// The `properties` of a region's event subscription, as `infra/modules/event-subscriptions.bicep`
/// deploys it (the same batching, filter, retry policy and dead-lettering with the topic's
/// identity; `tests/tests/infra_subscriptions.rs` checks that the two agree).
pub fn worker_subscription(endpoint_url: &str) -> serde_json::Value {
    json!({
        "eventDeliverySchema": "EventGridSchema",
        "destination": {"endpointType": "WebHook", "properties": {
            "endpointUrl": endpoint_url,
            "maxEventsPerBatch": 10,
            "preferredBatchSizeInKilobytes": 64
        }},
        "filter": {"includedEventTypes": [
            saldo_core::events::RECORD_UPDATED,
            saldo_core::events::TRANSACTION_COMPLETED,
            saldo_core::events::NODE_HEARTBEAT
        ]},
        "retryPolicy": {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440},
        "deadLetterWithResourceIdentity": {
            "identity": {"type": "SystemAssigned"},
            "deadLetterDestination": {"endpointType": "StorageBlob", "properties": {
                "resourceId": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/saldo-local/providers/Microsoft.Storage/storageAccounts/saldolocal",
                "blobContainerName": DEADLETTER_CONTAINER
            }}
        }
    })
}

/// The process id recorded in `<root>/saldo.pid`, if that process is alive.
pub fn running_pid(root: &Path) -> Option<u32> {
    let pid: i32 = std::fs::read_to_string(root.join("saldo.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // Signal 0 checks existence without sending anything.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok()?;
    Some(pid as u32)
}

impl Stack {
    /// Starts every wanted component that exists, health-checks each, and writes the manifest.
    /// On any failure, everything already started is stopped again before the error returns.
    pub async fn start(config: StackConfig) -> Result<Stack> {
        config.validate()?;
        for dir in ["logs", "data", "deadletter"] {
            std::fs::create_dir_all(config.root.join(dir))
                .with_context(|| format!("creating {}", config.root.join(dir).display()))?;
        }
        let lock = config.root.join("saldo.pid");
        if let Some(pid) = running_pid(&config.root) {
            bail!(
                "a Saldo stack is already running from {} (pid {pid}): see `saldo status`, or stop it with `saldo down`",
                config.root.display()
            );
        }
        std::fs::write(&lock, std::process::id().to_string())?;
        let keys = Keys::load_or_create(&config.root.join("data").join("keys.json"))?;
        let remembered: RememberedPorts =
            std::fs::read_to_string(config.root.join("data/ports.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
        let manifest = Manifest {
            root: config.root.clone(),
            pid: std::process::id(),
            ..Default::default()
        };
        let mut stack = Stack {
            config,
            manifest,
            running: Vec::new(),
            lives: BTreeMap::new(),
            keys,
            remembered,
            lock: Some(lock),
        };
        match stack.start_all().await {
            Ok(()) => Ok(stack),
            Err(e) => {
                stack.stop().await;
                Err(e)
            }
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The running component called `name` (e.g. `worker-westeurope`).
    pub fn component(&mut self, name: &str) -> Option<&mut Running> {
        self.running.iter_mut().find(|r| r.spec.name == name)
    }

    /// Stops one component (e.g. `mongodb`, to see the fleet ride out a database outage).
    pub async fn stop_component(&mut self, name: &str) -> Result<()> {
        let r = self
            .component(name)
            .with_context(|| format!("no component {name}"))?;
        r.stop(Duration::from_secs(10)).await;
        Ok(())
    }

    /// Starts a component stopped with [`Stack::stop_component`] again: same program, same port,
    /// same data.
    pub async fn start_component(&mut self, name: &str) -> Result<()> {
        let i = self
            .running
            .iter()
            .position(|r| r.spec.name == name)
            .with_context(|| format!("no component {name}"))?;
        let (spec, log) = (self.running[i].spec.clone(), self.running[i].log.clone());
        let mut fresh = Running::spawn(spec, log)?;
        let healthy = fresh.wait_healthy().await;
        if let Some(p) = self.manifest.processes.iter_mut().find(|p| p.name == name) {
            p.pid = fresh.pid();
        }
        if let Some(life) = self.lives.get_mut(name) {
            life.started_on_purpose(std::time::Instant::now());
        }
        self.running[i] = fresh;
        healthy
    }

    /// Names, pids and endpoints of what runs, in start order.
    pub fn table(&self) -> Vec<(String, i32, String)> {
        self.running
            .iter()
            .map(|r| (r.spec.name.clone(), r.pid(), r.spec.endpoint.clone()))
            .collect()
    }

    async fn start_all(&mut self) -> Result<()> {
        let c = self.config.clone();
        let host = c.host.clone();
        // Configured ports are checked before anything starts, so that a taken one fails the
        // start with nothing half-started.
        let p = &c.ports;
        let fixed = [
            ("mongodb", p.mongodb),
            ("the topic", p.topic),
            ("the API", p.api),
            ("the SPA", p.spa),
        ];
        let node_ports = c.regions.iter().enumerate().map(|(i, r)| {
            (
                c.node_host(i),
                r.as_str(),
                p.first_node.map(|f| f + i as u16),
            )
        });
        let fixed = fixed.into_iter().map(|(w, p)| (host.clone(), w, p));
        for (on, what, port) in fixed.chain(node_ports) {
            if let Some(port) = port {
                ports::ensure_free(&on, port, what)?;
            }
        }

        if c.wants(Component::Mongodb) {
            let venv = Venv::ensure(&c.venv(), &c.repo.join("tools/requirements-secantus.txt"))?;
            let port = self.port("mongodb", c.ports.mongodb)?;
            let uri = format!("mongodb://{host}:{port}/?directConnection=true");
            let data = c.root.join("data").join("mongodb");
            std::fs::create_dir_all(&data)?;
            let mut args = vec![
                "--host".into(),
                host.clone(),
                "--port".into(),
                port.to_string(),
                "--storage-path".into(),
                data.display().to_string(),
            ];
            // Without it SecantusDB acknowledges a transaction's commit before the commit is on
            // disk, even with write concern {w: majority, j: true}: a SIGKILL loses acknowledged
            // purchases (tests/tests/crash.rs).
            if c.mongodb_sync_on_commit {
                args.push("--sync-on-commit".into());
            }
            self.launch(Spec {
                name: "mongodb".into(),
                program: venv.secantusd(),
                args,
                env: vec![],
                cwd: Some(data.clone()),
                health: Health::mongodb(&uri),
                ready_timeout: Duration::from_secs(60),
                endpoint: uri.clone(),
            })
            .await?;
            self.manifest.mongodb = Some(MongoEntry {
                uri,
                database: DATABASE.into(),
            });
        }

        if c.wants(Component::Topic) && self.exists("saldo-eventgrid")? {
            // Keyless: the managed-identity stand-in first, so the topic can trust its key.
            let identity = if c.keyless {
                Some(self.start_identity().await?)
            } else {
                None
            };
            let port = self.port("topic", c.ports.topic)?;
            let base = format!("http://{host}:{port}");
            let deadletter = c.root.join("deadletter");
            let mut args = vec![
                "--host".into(),
                host.clone(),
                "--port".into(),
                port.to_string(),
                "--key".into(),
                self.keys.topic_key.clone(),
                "--data-dir".into(),
                c.root.join("data").join("eventgrid").display().to_string(),
                "--deadletter-dir".into(),
                deadletter.display().to_string(),
                "--time-scale".into(),
                c.time_scale.to_string(),
            ];
            if identity.is_some() {
                args.extend([
                    "--entra-public-key-file".into(),
                    self.identity_dir()
                        .join("identity.pub")
                        .display()
                        .to_string(),
                    "--disable-local-auth".into(),
                ]);
            }
            self.launch(Spec {
                name: "topic".into(),
                program: c.bin("saldo-eventgrid"),
                args,
                env: self.common_env(),
                cwd: None,
                health: Health::topic(&base),
                ready_timeout: Duration::from_secs(30),
                endpoint: format!("{base}/api/events"),
            })
            .await?;
            self.manifest.topic = Some(TopicEntry {
                endpoint: format!("{base}/api/events"),
                key: self.keys.topic_key.clone(),
                management: base,
                deadletter,
                identity,
            });
        }

        if c.wants(Component::Workers)
            && self.exists("saldo-funchost")?
            && self.exists("saldo-worker")?
        {
            // Ports first, so that every worker can be told its peers' URLs.
            let mut nodes = Vec::new();
            for (i, region) in c.regions.iter().enumerate() {
                let fixed = c.ports.first_node.map(|p| p + i as u16);
                let on = c.node_host(i);
                let port = self.port_on(&on, &format!("worker-{region}"), fixed)?;
                nodes.push(NodeEntry {
                    name: region.clone(),
                    region: region.clone(),
                    url: format!("http://{on}:{port}"),
                    function_key: self.keys.fleet_function_key.clone(),
                    master_key: self.keys.master_key.clone(),
                    instances: Vec::new(),
                });
            }
            for node in &nodes {
                let spec = self.worker_spec(node, &nodes)?;
                self.launch(spec).await?;
            }
            for node in &mut nodes {
                node.instances = host_instances(&node.url, &node.master_key).await;
            }
            self.manifest.nodes = nodes;
            if self.manifest.topic.is_some() {
                self.subscribe_workers().await?;
            }
        }

        if c.wants(Component::Api) && self.exists("saldo-funchost")? && self.exists("saldo-api")? {
            let port = self.port("api", c.ports.api)?;
            let url = format!("http://{host}:{port}");
            let spec = self.api_spec(&url, port)?;
            self.launch(spec).await?;
            self.manifest.api = Some(ApiEntry {
                url,
                master_key: self.keys.master_key.clone(),
            });
        }

        if c.seed && self.manifest.topic.is_some() && !self.manifest.nodes.is_empty() {
            crate::seed::seed(&self.manifest)
                .await
                .context("seeding the demo catalogue")?;
        }

        if c.wants(Component::Spa)
            && let Some(api) = self.manifest.api.clone()
            && let Some(spec) = self.spa_spec(&api.url)?
        {
            let url = spec.endpoint.clone();
            self.launch(spec).await?;
            self.manifest.spa = Some(SpaEntry { url });
        }

        std::fs::write(
            self.config.root.join("data/ports.json"),
            serde_json::to_vec_pretty(&self.remembered)?,
        )?;
        self.manifest.save()?;
        Ok(())
    }

    /// Environment every process gets: the extra settings of the config (e.g. the Application
    /// Insights connection string passed through by `saldo up`).
    fn common_env(&self) -> Vec<(String, String)> {
        self.config
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn identity_dir(&self) -> PathBuf {
        self.config.root.join("data").join("identity")
    }

    /// The managed-identity endpoint stand-in (`saldo-identity`). Its signing key is generated
    /// at first start under `<root>/data/identity/` (local only, never in the repository); the
    /// `X-IDENTITY-HEADER` secret is new at every start, as the platform's is per instance.
    async fn start_identity(&mut self) -> Result<IdentityEntry> {
        let c = self.config.clone();
        if !self.exists("saldo-identity")? {
            bail!("--keyless needs saldo-identity: build it first (cargo build --bins)");
        }
        let dir = self.identity_dir();
        std::fs::create_dir_all(&dir)?;
        let port = self.port("identity", None)?;
        let base = format!("http://{}:{port}", c.host);
        use rand::Rng;
        let header: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        self.launch(Spec {
            name: "identity".into(),
            program: c.bin("saldo-identity"),
            args: vec![
                "--host".into(),
                c.host.clone(),
                "--port".into(),
                port.to_string(),
                "--key-file".into(),
                dir.join("identity.key").display().to_string(),
                "--public-key-file".into(),
                dir.join("identity.pub").display().to_string(),
            ],
            env: {
                let mut env = self.common_env();
                env.push(("SALDO_IDENTITY_HEADER".into(), header.clone()));
                env
            },
            cwd: None,
            health: Health::topic(&base),
            ready_timeout: Duration::from_secs(30),
            endpoint: format!("{base}/msi/token"),
        })
        .await?;
        Ok(IdentityEntry {
            endpoint: format!("{base}/msi/token"),
            header,
        })
    }

    /// How an app reaches the topic: the key, or (keyless) the managed identity's endpoint, as
    /// App Service gives every app with an identity.
    fn topic_settings(&self, settings: &mut BTreeMap<String, String>) {
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

    fn worker_spec(&self, node: &NodeEntry, all: &[NodeEntry]) -> Result<Spec> {
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

    fn api_spec(&self, url: &str, port: u16) -> Result<Spec> {
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

    fn host_args(&self, app_dir: &Path, port: &str, handler: &str) -> Vec<String> {
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
    fn spa_spec(&mut self, api_url: &str) -> Result<Option<Spec>> {
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

    /// One Event Grid subscription per region, to that region's webhook. Creating it runs the
    /// validation handshake against the worker, through its host, so a broken webhook fails here.
    async fn subscribe_workers(&self) -> Result<()> {
        let topic = self.manifest.topic.as_ref().expect("checked by caller");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(40))
            .build()?;
        for node in &self.manifest.nodes {
            let name = format!("worker-{}", node.region);
            let body = json!({"properties": worker_subscription(&format!(
                "{}/api/eventgrid?code={}",
                node.url, node.function_key
            ))});
            let resp = http
                .put(format!("{}/subscriptions/{name}", topic.management))
                .header("aeg-sas-key", &topic.key)
                .json(&body)
                .send()
                .await
                .with_context(|| format!("creating subscription {name}"))?;
            if !resp.status().is_success() {
                let status = resp.status();
                bail!(
                    "creating subscription {name} failed ({status}): {}",
                    resp.text().await.unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    fn exists(&self, bin: &str) -> Result<bool> {
        let path = self.config.bin(bin);
        if path.is_file() {
            return Ok(true);
        }
        if self.config.require_all {
            bail!(
                "{} not found: build it first (cargo build --bins)",
                path.display()
            );
        }
        eprintln!(
            "saldo: skipping what needs {bin} (not built: {})",
            path.display()
        );
        Ok(false)
    }

    /// A configured port (must be free), else the one used last time (if free), else a new one.
    fn port(&mut self, name: &str, fixed: Option<u16>) -> Result<u16> {
        let host = self.config.host.clone();
        self.port_on(&host, name, fixed)
    }

    /// [`Stack::port`] on a given address.
    fn port_on(&mut self, host: &str, name: &str, fixed: Option<u16>) -> Result<u16> {
        let host = host.to_string();
        let port = match fixed {
            Some(p) => {
                ports::ensure_free(&host, p, name)?;
                p
            }
            None => match self.remembered.ports.get(name) {
                Some(&p) if ports::ensure_free(&host, p, name).is_ok() => p,
                _ => ports::free_port(&host)?,
            },
        };
        self.remembered.ports.insert(name.to_string(), port);
        Ok(port)
    }

    async fn launch(&mut self, spec: Spec) -> Result<()> {
        let log = self
            .config
            .root
            .join("logs")
            .join(format!("{}.log", spec.name));
        let mut running = Running::spawn(spec, log.clone())?;
        self.manifest.processes.push(ProcessEntry {
            name: running.spec.name.clone(),
            pid: running.pid(),
            log,
            restarts: 0,
            last_exit: None,
        });
        self.lives.insert(
            running.spec.name.clone(),
            Life::new(self.config.restart.clone(), std::time::Instant::now()),
        );
        let healthy = running.wait_healthy().await;
        self.running.push(running);
        healthy
    }

    /// Waits for Ctrl-C or SIGTERM, restarting every component that dies meanwhile (see
    /// [`crate::supervisor`]).
    pub async fn supervise(&mut self) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                _ = tick.tick() => self.keep_alive(),
            }
        }
    }

    /// One round of supervision: notes every component that died (and clears what it left in
    /// its process group), and starts again every one whose back-off is over. Never waits for a
    /// component to become healthy, so one slow start delays no other restart; a restarted
    /// component that fails again is simply noticed again on a later round.
    pub fn keep_alive(&mut self) {
        let now = std::time::Instant::now();
        let mut any = false;
        for i in 0..self.running.len() {
            let mut changed = false;
            let name = self.running[i].spec.name.clone();
            let Some(life) = self.lives.get_mut(&name) else {
                continue;
            };
            if self.running[i].is_stopped() {
                continue; // stopped on purpose: not a death
            }
            if !life.waiting()
                && let Some(status) = self.running[i].exited()
            {
                // Children it left in its group (a host's handler, the SPA CLI's node) go too,
                // so the restart finds its port free.
                self.running[i].kill_group();
                let wait = life.died(status.to_string(), now, chrono::Utc::now());
                eprintln!(
                    "saldo: {name} exited ({status}); restarting in {} ms (see {})",
                    wait.as_millis(),
                    self.running[i].log.display()
                );
                changed = true;
            }
            if life.due(now) {
                let (spec, log) = (self.running[i].spec.clone(), self.running[i].log.clone());
                match Running::spawn(spec, log) {
                    Ok(fresh) => {
                        life.restarted(now);
                        eprintln!(
                            "saldo: {name} restarted (pid {}, restart {})",
                            fresh.pid(),
                            life.restarts
                        );
                        self.running[i] = fresh;
                    }
                    Err(e) => {
                        let wait = life.start_failed(format!("{e:#}"), now, chrono::Utc::now());
                        eprintln!(
                            "saldo: could not restart {name}: {e:#}; trying again in {} ms",
                            wait.as_millis()
                        );
                    }
                }
                changed = true;
            }
            if changed && let Some(p) = self.manifest.processes.iter_mut().find(|p| p.name == name)
            {
                let life = &self.lives[&name];
                p.pid = self.running[i].pid();
                p.restarts = life.restarts;
                p.last_exit = life.last_exit.clone();
            }
            any |= changed;
        }
        if any && let Err(e) = self.manifest.save() {
            eprintln!("saldo: could not update the manifest: {e:#}");
        }
    }

    /// Stops every component in reverse start order and removes the manifest and the pid file.
    pub async fn stop(&mut self) {
        for r in self.running.iter_mut().rev() {
            r.stop(Duration::from_secs(10)).await;
        }
        self.running.clear();
        let _ = std::fs::remove_file(Manifest::path(&self.config.root));
        if let Some(lock) = self.lock.take() {
            let _ = std::fs::remove_file(lock);
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for r in &mut self.running {
            r.kill_now();
        }
        if let Some(lock) = self.lock.take() {
            let _ = std::fs::remove_file(Manifest::path(&self.config.root));
            let _ = std::fs::remove_file(lock);
        }
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

/// The handler processes a host reports (empty if it cannot be asked; bounded by a timeout).
pub async fn host_instances(url: &str, master_key: &str) -> Vec<crate::manifest::InstanceEntry> {
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
    else {
        return Vec::new();
    };
    let status = client
        .get(format!("{url}/admin/host/status"))
        .header("x-functions-key", master_key)
        .send()
        .await;
    match status {
        Ok(r) => match r.json::<serde_json::Value>().await {
            Ok(v) => crate::manifest::InstanceEntry::from_host_status(&v),
            Err(_) => Vec::new(),
        },
        Err(_) => Vec::new(),
    }
}

/// Base URLs of every handler process of a region (each instance answers `/api/status` with
/// its own counters, which live in its memory): the instances' own loopback ports as the host
/// reports them now, or the region's URL if the host reports none.
pub async fn instance_urls(node: &NodeEntry) -> Vec<String> {
    let ports: Vec<u16> = host_instances(&node.url, &node.master_key)
        .await
        .into_iter()
        .filter_map(|i| i.port)
        .collect();
    if ports.is_empty() {
        return vec![node.url.clone()];
    }
    // Handlers listen on 127.0.0.1 inside their host (as an instance's worker process does).
    ports
        .into_iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect()
}
