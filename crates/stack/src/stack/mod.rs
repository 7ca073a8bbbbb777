//! Starting and stopping the whole stack, in dependency order:
//!
//! 1. `mongodb`  SecantusDB, the stand-in for Cosmos DB for MongoDB.
//! 2. `topic`    the Event Grid emulator.
//! 3. `worker-<region>`  one Functions host stand-in per region, each running `saldo-worker`.
//!    Then one Event Grid subscription per region, pointing at that region's webhook.
//! 4. `api`      a Functions host stand-in running `saldo-api`; then the demo catalogue is seeded.
//! 5. `spa`      the SPA behind the Static Web Apps CLI.
//!
//! To add a component: write a `fn <name>_spec(..) -> Spec` in `specs` and call
//! `self.launch(spec)` at the right place in `start`; add its entry to the [`Manifest`].
//!
//! Modules: `start` (starting each component in that order), `specs` (how each process is
//! started: its program, arguments and settings), `supervise` (restarting what dies) and
//! `fleet` (the regions' event subscriptions and their hosts' instances).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::component::{Running, Spec};
use crate::config::StackConfig;
use crate::keys::Keys;
use crate::manifest::{Manifest, ProcessEntry};
use crate::ports;
use crate::supervisor::Life;

mod fleet;
mod specs;
mod start;
mod supervise;

pub use fleet::{host_instances, instance_urls, worker_subscription};

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
        let mut stack = Stack::open(config)?;
        let started = stack.start_all().await;
        stack.started_or_stopped(started).await
    }

    /// The stack before anything starts: its folders, the pid file that marks it running, its
    /// keys and remembered ports.
    fn open(config: StackConfig) -> Result<Stack> {
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
        Ok(Stack {
            config,
            manifest,
            running: Vec::new(),
            lives: BTreeMap::new(),
            keys,
            remembered,
            lock: Some(lock),
        })
    }

    /// The stack, if starting it went well (`started`); otherwise everything already started is
    /// stopped again, and the pid file and manifest removed, before the error returns.
    async fn started_or_stopped(mut self, started: Result<()>) -> Result<Stack> {
        match started {
            Ok(()) => Ok(self),
            Err(e) => {
                self.stop().await;
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

    pub(super) fn exists(&self, bin: &str) -> Result<bool> {
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
    pub(super) fn port(&mut self, name: &str, fixed: Option<u16>) -> Result<u16> {
        let host = self.config.host.clone();
        self.port_on(&host, name, fixed)
    }

    /// [`Stack::port`] on a given address.
    pub(super) fn port_on(&mut self, host: &str, name: &str, fixed: Option<u16>) -> Result<u16> {
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

    pub(super) async fn launch(&mut self, spec: Spec) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::Health;

    /// A component that sleeps, healthy as soon as `health` answers.
    fn spec(name: &str, program: &str, args: &[&str], health: Health) -> Spec {
        Spec {
            name: name.into(),
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            cwd: None,
            health,
            ready_timeout: Duration::from_secs(5),
            endpoint: String::new(),
        }
    }

    /// `saldo up` either starts everything or leaves nothing: a component that fails half-way
    /// through stops the ones already started (their process groups are gone) and removes the
    /// pid file, so the failed start leaves no process behind and no stack "running".
    #[tokio::test]
    async fn a_component_failing_half_way_stops_what_was_already_started() {
        // A health endpoint that answers 200 to anything.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut c, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf).await;
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        let dir = tempfile::tempdir().unwrap();
        // What `validate` recognises the repository by; no component of it is started here.
        std::fs::create_dir(dir.path().join("functions-host")).unwrap();
        let mut config = StackConfig::new(dir.path(), dir.path());
        config.root = dir.path().join("state");
        let mut stack = Stack::open(config).unwrap();
        let pid_file = stack.config.root.join("saldo.pid");
        assert!(pid_file.is_file());

        let started = async {
            stack
                .launch(spec(
                    "first",
                    "/usr/bin/sleep",
                    &["600"],
                    Health::spa(url.trim_end_matches('/')),
                ))
                .await?;
            stack
                // Exits at once, and nothing answers its health check.
                .launch(spec(
                    "second",
                    "/usr/bin/false",
                    &[],
                    Health::spa("http://127.0.0.1:1"),
                ))
                .await
        }
        .await;
        let first = stack.table()[0].1;
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), None).is_ok(),
            "the first component ran"
        );
        let e = stack
            .started_or_stopped(started)
            .await
            .err()
            .expect("the start failed");
        assert!(
            e.to_string().contains("second exited during start-up"),
            "{e:#}"
        );
        // Its group is gone: no process of it left (a signal to the group finds nobody).
        assert!(
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(first), None).is_err(),
            "the first component's group outlived the failed start"
        );
        assert!(!pid_file.exists(), "a failed start leaves no stack running");
    }
}
