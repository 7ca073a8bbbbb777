//! Starting the components in dependency order (see the module above), each health-checked
//! before the next; the manifest records what runs.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{DATABASE, Stack, host_instances};
use crate::component::{Health, Spec};
use crate::config::{Component, StackConfig};
use crate::manifest::{ApiEntry, IdentityEntry, MongoEntry, NodeEntry, SpaEntry, TopicEntry};
use crate::ports;
use crate::venv::Venv;

impl Stack {
    pub(super) async fn start_all(&mut self) -> Result<()> {
        let c = self.config.clone();
        check_fixed_ports(&c)?;
        if c.wants(Component::Mongodb) {
            self.start_mongodb(&c).await?;
        }
        if c.wants(Component::Topic) && self.exists("saldo-eventgrid")? {
            self.start_topic(&c).await?;
        }
        if c.wants(Component::Workers)
            && self.exists("saldo-funchost")?
            && self.exists("saldo-worker")?
        {
            self.start_workers(&c).await?;
        }
        if c.wants(Component::Api) && self.exists("saldo-funchost")? && self.exists("saldo-api")? {
            let port = self.port("api", c.ports.api)?;
            let url = format!("http://{}:{port}", c.host);
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

    /// 1. SecantusDB.
    async fn start_mongodb(&mut self, c: &StackConfig) -> Result<()> {
        let host = c.host.clone();
        let venv = Venv::ensure(&c.venv(), &c.repo.join("tools/requirements-secantus.txt"))?;
        let port = self.port("mongodb", c.ports.mongodb)?;
        let uri = format!("mongodb://{host}:{port}/?directConnection=true");
        let data = c.root.join("data").join("mongodb");
        std::fs::create_dir_all(&data)?;
        // SecantusDB with Cosmos DB's 5 s limit on a transaction (tools/secantusd.py says why).
        let mut args = vec![
            c.repo.join("tools/secantusd.py").display().to_string(),
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
            program: venv.python(),
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
        Ok(())
    }

    /// 2. The Event Grid emulator (and, keyless, the managed-identity stand-in before it).
    async fn start_topic(&mut self, c: &StackConfig) -> Result<()> {
        let host = c.host.clone();
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
        Ok(())
    }

    /// 3. One host per region, then their subscriptions.
    async fn start_workers(&mut self, c: &StackConfig) -> Result<()> {
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
        Ok(())
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
}

/// Configured ports are checked before anything starts, so that a taken one fails the start
/// with nothing half-started.
fn check_fixed_ports(c: &StackConfig) -> Result<()> {
    let host = c.host.clone();
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
    Ok(())
}
