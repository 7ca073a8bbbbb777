//! One supervised process of the stack: how to start it, how to know it is healthy, how to stop
//! it without leaving anything behind.
//!
//! Every component runs in its own process group, so stopping it also stops what it started (the
//! Functions host stand-in's handler, the SWA CLI's node children): no orphans, no bound ports.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// How to tell that a component is up.
#[derive(Debug, Clone)]
pub enum Health {
    /// A GET answering 2xx, with an optional header (e.g. a master key).
    Http {
        url: String,
        header: Option<(String, String)>,
    },
    /// A MongoDB `ping` command.
    Mongo { uri: String },
}

impl Health {
    // What "healthy" means for each kind of component: `saldo up` waits for these and
    // `saldo status` probes them, so the two can never disagree.

    pub fn mongodb(uri: &str) -> Health {
        Health::Mongo {
            uri: uri.to_string(),
        }
    }

    /// The Event Grid emulator, from its base (management) URL.
    pub fn topic(base: &str) -> Health {
        Self::get(format!("{base}/healthz"))
    }

    /// A regional worker through its host: the worker's own (anonymous) status function.
    pub fn worker(url: &str) -> Health {
        Self::get(format!("{url}/api/status"))
    }

    /// The API through its host.
    pub fn api(url: &str) -> Health {
        Self::get(format!("{url}/api/openapi.json"))
    }

    pub fn spa(url: &str) -> Health {
        Self::get(format!("{url}/"))
    }

    fn get(url: String) -> Health {
        Health::Http { url, header: None }
    }

    /// One probe, with a short timeout. `Ok` means healthy; `Err` says why not.
    pub async fn probe(&self) -> Result<()> {
        match self {
            Health::Http { url, header } => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .build()?;
                let mut req = client.get(url);
                if let Some((k, v)) = header {
                    req = req.header(k, v);
                }
                let resp = req.send().await.with_context(|| format!("GET {url}"))?;
                if !resp.status().is_success() {
                    bail!("GET {url} answered {}", resp.status());
                }
                Ok(())
            }
            Health::Mongo { uri } => {
                let mut opts = mongodb::options::ClientOptions::parse(uri).await?;
                opts.server_selection_timeout = Some(Duration::from_secs(1));
                opts.connect_timeout = Some(Duration::from_secs(1));
                let client = mongodb::Client::with_options(opts)?;
                client
                    .database("admin")
                    .run_command(mongodb::bson::doc! {"ping": 1})
                    .await
                    .context("mongodb ping")?;
                Ok(())
            }
        }
    }
}

/// Everything needed to start one component.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub health: Health,
    pub ready_timeout: Duration,
    /// What to show in the table (usually the URL).
    pub endpoint: String,
}

/// A started component.
pub struct Running {
    pub spec: Spec,
    pub child: Child,
    pub log: PathBuf,
    /// Process group id (= the child's pid, as it leads its own group).
    pgid: i32,
    stopped: bool,
}

impl Running {
    /// Starts the process with stdout and stderr appended to `log`, in a new process group.
    pub fn spawn(spec: Spec, log: PathBuf) -> Result<Running> {
        if !spec.program.is_file() {
            bail!(
                "{}: program {} not found",
                spec.name,
                spec.program.display()
            );
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", spec.name))?;
        let pgid = child.id().context("child has no pid")? as i32;
        Ok(Running {
            spec,
            child,
            log,
            pgid,
            stopped: false,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pgid
    }

    /// Waits until the health probe passes, the process exits, or the timeout runs out.
    pub async fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.spec.ready_timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited during start-up ({status}); last lines of {}:\n{}",
                    self.spec.name,
                    self.log.display(),
                    tail(&self.log, 15)
                );
            }
            let last = match self.spec.health.probe().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} did not become healthy within {:?} ({last:#}); last lines of {}:\n{}",
                    self.spec.name,
                    self.spec.ready_timeout,
                    self.log.display(),
                    tail(&self.log, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// SIGTERM to the whole group, then SIGKILL after `grace`; returns once no process of the
    /// group is left ([`saldo_process::stop_group`]).
    pub async fn stop(&mut self, grace: Duration) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if saldo_process::stop_group(&mut self.child, grace).await == saldo_process::Stopped::Killed
        {
            tracing::warn!(component = %self.spec.name, "did not stop in {grace:?}; killed");
        }
    }

    /// Synchronous last resort (used by `Drop` of the stack): SIGKILL the group.
    pub fn kill_now(&mut self) {
        if !self.stopped {
            self.stopped = true;
            saldo_process::kill_group(self.pgid as u32);
        }
    }

    /// Was it stopped on purpose ([`Running::stop`] or [`Running::kill_now`])?
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// SIGKILL whatever is left in the process group (after the leader died on its own).
    pub fn kill_group(&self) {
        saldo_process::kill_group(self.pgid as u32);
    }

    /// Has the process exited on its own?
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// The last `n` lines of a log file (for error messages).
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
