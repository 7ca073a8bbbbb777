//! Harness for whole-system tests: the real local stack, on free ports, in a temporary folder.
//!
//! `TestStack::start` runs exactly what `saldo up` runs (it drives `saldo-stack` in process), with
//! fast durations so that takeovers and retries happen in seconds. Dropping the stack kills every
//! process, so a failing test leaves nothing behind.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use saldo_stack::config::{Component, StackConfig};
use saldo_stack::{Manifest, Stack};

/// The repository root (this crate lives in `<repo>/tests`).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where cargo put the binaries: test executables live in `target/<profile>/deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("deps folder");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("profile folder")
    } else {
        dir
    };
    dir.to_path_buf()
}

/// Settings that make the fleet fast enough for tests without changing its logic.
pub fn fast_worker_settings() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("SALDO_TAKEOVER_MS".into(), "1500".into()),
        ("SALDO_LIVENESS_MS".into(), "4000".into()),
        ("SALDO_HEARTBEAT_SCHEDULE".into(), "* * * * * *".into()),
        ("SALDO_SWEEP_SCHEDULE".into(), "* * * * * *".into()),
        ("SALDO_CATCHUP_EVERY".into(), "2".into()),
    ])
}

pub struct Options {
    pub components: Vec<Component>,
    pub worker_settings: BTreeMap<String, String>,
    pub time_scale: f64,
    pub seed: bool,
    pub env: BTreeMap<String, String>,
    /// SecantusDB's `--sync-on-commit` (on, as in `saldo up`; only a measurement turns it off).
    pub mongodb_sync_on_commit: bool,
    /// App settings of the API, on top of the stack's.
    pub api_settings: BTreeMap<String, String>,
    /// HTTP instances per region (plus one timer instance when 2 or more), as on Flex.
    pub instances: usize,
    /// `saldo up --keyless`: tokens from the managed-identity stand-in, no topic key.
    pub keyless: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            components: vec![
                Component::Mongodb,
                Component::Topic,
                Component::Workers,
                Component::Api,
            ],
            worker_settings: fast_worker_settings(),
            // Event Grid retries at 1/20 of Azure's delays: 10 s becomes 0.5 s.
            time_scale: 20.0,
            seed: true,
            env: BTreeMap::new(),
            mongodb_sync_on_commit: true,
            api_settings: BTreeMap::new(),
            instances: 2,
            keyless: false,
        }
    }
}

pub struct TestStack {
    pub stack: Stack,
    pub http: reqwest::Client,
    root: tempfile::TempDir,
}

impl TestStack {
    pub async fn start(opts: Options) -> Result<TestStack> {
        let root = tempfile::Builder::new().prefix("saldo-test-").tempdir()?;
        Self::start_in(root, opts).await
    }

    /// Starts a stack in an existing folder (used to prove that data survives a restart).
    pub async fn start_in(root: tempfile::TempDir, opts: Options) -> Result<TestStack> {
        let mut config = StackConfig::new(&repo(), &bin_dir());
        config.root = root.path().to_path_buf();
        config.components = opts.components;
        config.require_all = true;
        config.worker_settings = opts.worker_settings;
        config.time_scale = opts.time_scale;
        config.seed = opts.seed;
        config.env = opts.env;
        config.mongodb_sync_on_commit = opts.mongodb_sync_on_commit;
        config.api_settings = opts.api_settings;
        config.instances = opts.instances;
        config.keyless = opts.keyless;
        let stack = Stack::start(config).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(TestStack { stack, http, root })
    }

    pub fn manifest(&self) -> &Manifest {
        self.stack.manifest()
    }

    pub fn root(&self) -> &std::path::Path {
        self.root.path()
    }

    /// Stops everything gracefully and hands back the folder (for a restart).
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.stack.stop().await;
        self.root
    }

    pub fn api(&self) -> String {
        self.manifest()
            .api
            .as_ref()
            .expect("the stack runs the API")
            .url
            .clone()
    }

    /// SIGKILLs a component's process (its group leader only, as a crash would: what it started
    /// is left to notice on its own) and waits until it is gone.
    pub async fn sigkill(&mut self, name: &str) -> Result<()> {
        let r = self
            .stack
            .component(name)
            .with_context(|| format!("no component {name}"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(r.pid()),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let _ = tokio::time::timeout(Duration::from_secs(10), r.child.wait()).await;
        Ok(())
    }

    /// SIGSTOPs (`pause` true) or SIGCONTs a component's whole process group (a region's host
    /// and its handler instances): paused, it holds its connections and answers nothing, as a
    /// frozen machine would.
    pub fn pause(&mut self, name: &str, pause: bool) -> Result<()> {
        let r = self
            .stack
            .component(name)
            .with_context(|| format!("no component {name}"))?;
        let signal = if pause {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(r.pid()), signal)?;
        Ok(())
    }

    pub async fn database(&self) -> Result<mongodb::Database> {
        let m = self.manifest().mongodb.as_ref().context("no mongodb")?;
        let client = mongodb::Client::with_uri_str(&m.uri).await?;
        Ok(client.database(&m.database))
    }

    /// Stops (`"stop"`) or starts (`"start"`) a region's app, as `saldo region stop|start` does.
    pub async fn region(&self, region: &str, verb: &str) -> Result<()> {
        let action = match verb {
            "stop" => saldo_stack::manifest::HostAction::Stop,
            "start" => saldo_stack::manifest::HostAction::Start,
            other => bail!("unknown host action {other}"),
        };
        self.manifest().require_node(region)?.control(action).await
    }

    /// Starts the default test stack and waits until the catalogue is seeded and every node
    /// sees its peers (so that rankings agree).
    pub async fn ready() -> Result<TestStack> {
        let s = TestStack::start(Options::default()).await?;
        s.wait_for_catalogue().await?;
        s.wait_for_fleet().await?;
        Ok(s)
    }

    /// GET a JSON document from the API.
    pub async fn get_json(&self, path: &str) -> Result<(u16, serde_json::Value)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.api()))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
    }

    /// Waits until the seeded catalogue is visible through the API.
    pub async fn wait_for_catalogue(&self) -> Result<serde_json::Value> {
        wait_for(Duration::from_secs(60), "the seeded catalogue", || async {
            match self.get_json("/api/products").await {
                Ok((200, v))
                    if v.as_array()
                        .is_some_and(|a| a.len() >= saldo_stack::seed::CATALOGUE.len()) =>
                {
                    Some(v)
                }
                _ => None,
            }
        })
        .await
    }
}

/// Polls `f` every 200 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// True while any process of the group `pgid` exists.
pub fn group_alive(pgid: i32) -> bool {
    saldo_process::group_alive(pgid as u32)
}

/// The TCP ports in a URL-ish string (`http://127.0.0.1:1234/...`, `mongodb://127.0.0.1:5/?..`).
pub fn port_of(url: &str) -> Option<u16> {
    let after = url.split("://").nth(1)?;
    let hostport = after.split(['/', '?']).next()?;
    hostport.rsplit(':').next()?.parse().ok()
}

/// Shop and fleet helpers shared by the whole-system tests.
impl TestStack {
    /// Places an order through the API; returns the transaction id.
    pub async fn order(&self, lines: serde_json::Value) -> Result<String> {
        let resp = self
            .http
            .post(format!("{}/api/orders", self.api()))
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&serde_json::json!({ "lines": lines }))
            .send()
            .await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if status.as_u16() != 202 {
            bail!("order refused: {status} {body}");
        }
        Ok(body["transaction"]
            .as_str()
            .context("no transaction id")?
            .to_string())
    }

    /// Waits until the API reports the transaction completed or rejected; returns its document.
    pub async fn outcome(&self, tx: &str) -> Result<serde_json::Value> {
        wait_for(
            Duration::from_secs(60),
            &format!("the outcome of {tx}"),
            || async {
                match self.get_json(&format!("/api/transactions/{tx}")).await {
                    Ok((200, v)) if v["status"] != "pending" => Some(v),
                    _ => None,
                }
            },
        )
        .await
    }

    pub async fn stock(&self, product: u64) -> Result<i64> {
        let (status, v) = self.get_json(&format!("/api/products/{product}")).await?;
        if status != 200 {
            bail!("product {product}: {status} {v}");
        }
        v["saldo"].as_i64().context("no saldo")
    }

    /// One node's ledger entry for a transaction (None if that node does not know it).
    pub async fn ledger(&self, region: &str, tx: &str) -> Result<Option<serde_json::Value>> {
        let node = self.manifest().node(region).context("unknown region")?;
        let resp = self
            .http
            .get(format!("{}/api/ledger/{tx}", node.url))
            .header("x-functions-key", &node.function_key)
            .send()
            .await?;
        match resp.status().as_u16() {
            200 => Ok(Some(resp.json().await?)),
            404 => Ok(None),
            s => bail!("ledger of {region}: {s}"),
        }
    }

    /// The sum of one counter over every node that answers.
    pub async fn counter(&self, name: &str) -> Result<u64> {
        Ok(self.counter_by_node(name).await?.values().sum())
    }

    /// One counter summed over the instances of each region (counters live in each process's
    /// memory), by region; an instance that does not answer counts nothing.
    pub async fn counter_by_node(&self, name: &str) -> Result<BTreeMap<String, u64>> {
        let mut by = BTreeMap::new();
        for n in &self.manifest().nodes {
            let mut sum = 0;
            for url in saldo_stack::stack::instance_urls(n).await {
                if let Some(v) = self.instance_status(&url).await? {
                    sum += v["counters"][name].as_u64().unwrap_or(0);
                }
            }
            by.insert(n.name.clone(), sum);
        }
        Ok(by)
    }

    /// One instance's `/api/status`; `None` if it does not answer or answers an error (stopped,
    /// restarting). A 200 that is not JSON is an error.
    async fn instance_status(&self, url: &str) -> Result<Option<serde_json::Value>> {
        match self.http.get(format!("{url}/api/status")).send().await {
            Ok(resp) if resp.status().is_success() => Ok(Some(resp.json().await?)),
            _ => Ok(None),
        }
    }

    /// Waits until every region has swept at least `n` more times (counter `sweeps`), instead of
    /// sleeping for "a few sweeps".
    pub async fn wait_for_sweeps(&self, n: u64) -> Result<()> {
        let start = self.counter_by_node("sweeps").await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let now = self.counter_by_node("sweeps").await?;
            if start
                .iter()
                .all(|(k, v)| now.get(k).copied().unwrap_or(0) >= v + n)
            {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("regions did not sweep {n} more times within 60 s: {start:?} -> {now:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The emulator's `GET /metrics` (`accepted`, `walFsyncs`, and per subscription `delivered`,
    /// `failedAttempts`, ...): what tests wait on instead of sleeping.
    pub async fn topic_metrics(&self) -> Result<serde_json::Value> {
        let topic = self.manifest().topic.as_ref().context("no topic")?;
        let resp = self
            .http
            .get(format!("{}/metrics", topic.management))
            .header("aeg-sas-key", &topic.key)
            .send()
            .await?
            .error_for_status()?;
        Ok(resp.json().await?)
    }

    /// Publishes raw events to the topic with its key.
    pub async fn publish(&self, events: &serde_json::Value) -> Result<()> {
        let topic = self.manifest().topic.as_ref().context("no topic")?;
        let resp = self
            .http
            .post(format!("{}?api-version=2018-01-01", topic.endpoint))
            .header("aeg-sas-key", &topic.key)
            .json(events)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!(
                "publish: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Waits until every node believes every other node live (heartbeats heard), so that
    /// rankings are the same on every node.
    pub async fn wait_for_fleet(&self) -> Result<()> {
        let n = self.manifest().nodes.len();
        wait_for(
            Duration::from_secs(60),
            "every instance of every node to see every peer live",
            || async {
                // Every instance, not the one a node's URL reaches: each ranks on what it has
                // seen of the region's records, and a test that stops a peer right after this
                // relies on whichever instance gets the next delivery (or runs the next sweep)
                // having seen that peer's heartbeats change.
                for node in &self.manifest().nodes {
                    for url in saldo_stack::stack::instance_urls(node).await {
                        let v = self.instance_status(&url).await.ok()??;
                        let live = v["peers"]
                            .as_array()?
                            .iter()
                            .filter(|p| p["live"] == true)
                            .count();
                        if live + 1 < n {
                            return None;
                        }
                    }
                }
                Some(())
            },
        )
        .await
    }

    /// Waits until every instance of every other node believes `region` live (its heartbeats
    /// heard again), whatever `region` itself sees.
    pub async fn wait_until_heard(&self, region: &str) -> Result<()> {
        wait_for(
            Duration::from_secs(60),
            &format!("every instance of every other node to hear {region}"),
            || async {
                for node in self.manifest().nodes.iter().filter(|n| n.region != region) {
                    for url in saldo_stack::stack::instance_urls(node).await {
                        let v = self.instance_status(&url).await.ok()??;
                        let heard = v["peers"]
                            .as_array()?
                            .iter()
                            .any(|p| p["region"] == region && p["live"] == true);
                        if !heard {
                            return None;
                        }
                    }
                }
                Some(())
            },
        )
        .await
    }

    /// How much longer the topic holds back deliveries to `region`'s worker (0: not on
    /// probation).
    pub async fn probation_ms(&self, region: &str) -> Result<u64> {
        let m = self.topic_metrics().await?;
        m["subscriptions"][format!("worker-{region}")]["probationMs"]
            .as_u64()
            .with_context(|| format!("no probationMs for worker-{region} in {m}"))
    }

    pub fn regions(&self) -> Vec<String> {
        self.manifest()
            .nodes
            .iter()
            .map(|n| n.region.clone())
            .collect()
    }
}

/// A `recordUpdated` command in the Event Grid schema.
pub fn command(tx: &str, lines: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "id": tx,
        "eventType": "recordUpdated",
        "subject": "warehouse/products/test",
        "eventTime": chrono::Utc::now().to_rfc3339(),
        "data": {"transaction": tx, "products": lines},
        "dataVersion": "1.0"
    })
}
