//! Runs the custom handler process: starts it on a free port, waits until the port accepts
//! connections, restarts it (with a bounded exponential back-off from `backon`) when it crashes, and stops and
//! starts it on request. One task owns the child; everyone else sends it commands and watches
//! its [`HandlerState`].
//!
//! No orphans: the handler runs in its own process group, which we signal as a whole (SIGTERM,
//! then SIGKILL after a grace period); `kill_on_drop` covers a dropped `Child`; and the handler
//! gets `PR_SET_PDEATHSIG` so the kernel terminates it even if this host is SIGKILLed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use nix::sys::signal::Signal;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

/// How to start the handler.
#[derive(Debug, Clone)]
pub struct HandlerSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub working_dir: PathBuf,
    /// How long a (re)started handler has to open its port.
    pub startup_timeout: Duration,
    /// First and longest wait between restarts after a crash.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// After SIGTERM, how long the handler may take to exit before SIGKILL.
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerState {
    /// Being started on request (`/admin/host/start`).
    Starting,
    Running {
        port: u16,
        pid: u32,
    },
    /// Crashed or failed to start; the supervisor is retrying.
    Restarting {
        reason: String,
    },
    /// Stopped on request.
    Stopped,
}

enum Control {
    Stop(oneshot::Sender<()>),
    Start(oneshot::Sender<Result<(), String>>),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the supervisor task. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    tx: mpsc::Sender<Control>,
    state: watch::Receiver<HandlerState>,
    restarts: Arc<AtomicU64>,
}

impl Supervisor {
    /// Starts the handler and waits until it is ready; an error here means the app cannot start
    /// (the caller exits non-zero). On success the supervisor task keeps it running.
    pub async fn start(spec: HandlerSpec) -> Result<Self, String> {
        let child = spawn_ready(&spec).await?;
        let (state_tx, state) = watch::channel(HandlerState::Running {
            port: child.port,
            pid: child.pid,
        });
        // Commands are rare (admin calls); a small bound is plenty and keeps memory fixed.
        let (tx, rx) = mpsc::channel(8);
        let restarts = Arc::new(AtomicU64::new(0));
        let task = Task {
            schedule: schedule(&spec),
            spec,
            child: Some(child),
            want_running: true,
            delay: Duration::ZERO,
            state: state_tx,
            restarts: restarts.clone(),
        };
        tokio::spawn(task.run(rx));
        Ok(Self {
            tx,
            state,
            restarts,
        })
    }

    pub fn state(&self) -> HandlerState {
        self.state.borrow().clone()
    }

    /// How many times the handler was restarted after a crash.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Kills the handler and keeps it down until [`Supervisor::start_again`].
    pub async fn stop(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(Control::Stop(tx)).await?;
        rx.await.map_err(|_| "supervisor is gone".to_string())
    }

    /// Starts the handler again and waits until it is ready (a no-op if it is running).
    pub async fn start_again(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(Control::Start(tx)).await?;
        rx.await.map_err(|_| "supervisor is gone".to_string())?
    }

    /// Kills the handler for good (host shutdown).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Control::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn send(&self, c: Control) -> Result<(), String> {
        self.tx
            .send(c)
            .await
            .map_err(|_| "supervisor is gone".to_string())
    }
}

struct Running {
    child: Child,
    port: u16,
    pid: u32,
    since: Instant,
}

struct Task {
    spec: HandlerSpec,
    child: Option<Running>,
    want_running: bool,
    /// Restart waits: doubling from `backoff_min` to `backoff_max`. No jitter: one supervisor
    /// restarts one handler, so there is no herd to spread.
    schedule: ExponentialBackoff,
    /// The wait before the next restart.
    delay: Duration,
    state: watch::Sender<HandlerState>,
    restarts: Arc<AtomicU64>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Control>) {
        loop {
            if self.want_running && self.child.is_none() {
                // Crashed or failed to come up: wait, then try again, unless told otherwise.
                tokio::select! {
                    _ = tokio::time::sleep(self.delay) => {}
                    cmd = rx.recv() => {
                        if self.handle(cmd).await { return; }
                        continue;
                    }
                }
                match spawn_ready(&self.spec).await {
                    Ok(r) => {
                        self.restarts.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(port = r.port, pid = r.pid, "handler restarted");
                        self.publish_running(r);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "handler restart failed");
                        self.bump_backoff();
                        let _ = self.state.send(HandlerState::Restarting { reason: e });
                    }
                }
                continue;
            }
            let exited = async {
                match self.child.as_mut() {
                    Some(r) => r.child.wait().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = exited => {
                    let r = self.child.take().expect("a child exited, so there was one");
                    let reason = match status {
                        Ok(s) => format!("handler (pid {}) exited unexpectedly: {s}", r.pid),
                        Err(e) => format!("handler (pid {}) could not be waited for: {e}", r.pid),
                    };
                    // A handler that ran a while before crashing starts over at the shortest wait;
                    // one that keeps crashing right away backs off up to the maximum.
                    if r.since.elapsed() > self.spec.backoff_max * 3 {
                        self.reset_backoff();
                    }
                    self.bump_backoff();
                    tracing::error!(%reason, retry_in_ms = self.delay.as_millis() as u64, "handler crashed; restarting");
                    // Kill any processes the handler left behind in its group.
                    saldo_process::kill_group(r.pid);
                    let _ = self.state.send(HandlerState::Restarting { reason });
                }
                cmd = rx.recv() => {
                    if self.handle(cmd).await { return; }
                }
            }
        }
    }

    fn bump_backoff(&mut self) {
        // Without max_times the schedule never ends; backoff_max is the fallback all the same.
        self.delay = self.schedule.next().unwrap_or(self.spec.backoff_max);
    }

    fn reset_backoff(&mut self) {
        self.schedule = schedule(&self.spec);
    }

    fn publish_running(&mut self, r: Running) {
        let _ = self.state.send(HandlerState::Running {
            port: r.port,
            pid: r.pid,
        });
        self.child = Some(r);
    }

    /// Handles one command; true means "exit the task".
    async fn handle(&mut self, cmd: Option<Control>) -> bool {
        match cmd {
            Some(Control::Stop(reply)) => {
                self.want_running = false;
                if let Some(r) = self.child.take() {
                    terminate(r, self.spec.stop_grace).await;
                }
                let _ = self.state.send(HandlerState::Stopped);
                tracing::info!("handler stopped on request");
                let _ = reply.send(());
                false
            }
            Some(Control::Start(reply)) => {
                self.want_running = true;
                if self.child.is_some() {
                    let _ = reply.send(Ok(()));
                    return false;
                }
                let _ = self.state.send(HandlerState::Starting);
                let result = match spawn_ready(&self.spec).await {
                    Ok(r) => {
                        tracing::info!(port = r.port, pid = r.pid, "handler started on request");
                        self.reset_backoff();
                        self.publish_running(r);
                        Ok(())
                    }
                    Err(e) => {
                        // Keep trying in the background, as a crashed handler would be.
                        self.bump_backoff();
                        let _ = self
                            .state
                            .send(HandlerState::Restarting { reason: e.clone() });
                        Err(e)
                    }
                };
                let _ = reply.send(result);
                false
            }
            Some(Control::Shutdown(reply)) => {
                if let Some(r) = self.child.take() {
                    terminate(r, self.spec.stop_grace).await;
                }
                let _ = self.state.send(HandlerState::Stopped);
                let _ = reply.send(());
                true
            }
            // Every handle was dropped: the host is going away; `kill_on_drop` ends the child.
            None => true,
        }
    }
}

/// The restart waits of one handler: `backoff_min`, doubling, capped at `backoff_max`, for ever
/// (a host whose handler cannot start keeps trying, as Azure's does, and answers 503 meanwhile).
fn schedule(spec: &HandlerSpec) -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(spec.backoff_min)
        .with_max_delay(spec.backoff_max)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// Picks a free loopback port by binding port 0. Another process could take it before the
/// handler binds; the readiness wait then times out and the supervisor tries another port.
fn free_port() -> Result<u16, String> {
    let l =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Starts the handler and waits until its port accepts connections.
async fn spawn_ready(spec: &HandlerSpec) -> Result<Running, String> {
    let port = free_port()?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.working_dir)
        // The handler inherits our environment: app settings are the host's environment.
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("FUNCTIONS_WORKER_RUNTIME", "custom")
        .stdin(std::process::Stdio::null())
        // The handler's stdout goes to our stderr: our stdout carries only the `listening on`
        // line launchers wait for, and a handler printing its own must not be mistaken for it.
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .kill_on_drop(true)
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl, getppid, _exit).
    let parent = std::process::id();
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            // The parent may have died between fork and prctl; then nobody would signal us.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start handler {}: {e}", spec.program.display()))?;
    let pid = child.id().ok_or("handler exited at once")?;
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "handler {} exited ({status}) before opening port {port}",
                spec.program.display()
            ));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            tracing::info!(
                port,
                pid,
                ms = started.elapsed().as_millis() as u64,
                "handler is ready"
            );
            return Ok(Running {
                child,
                port,
                pid,
                since: Instant::now(),
            });
        }
        if started.elapsed() >= spec.startup_timeout {
            let r = Running {
                child,
                port,
                pid,
                since: started,
            };
            terminate(r, Duration::from_millis(500)).await;
            return Err(format!(
                "handler {} did not open port {port} within {:?}",
                spec.program.display(),
                spec.startup_timeout
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM to the handler's process group, then SIGKILL if it has not exited after `grace`;
/// returns once nothing of the group is left ([`saldo_process::stop_group`]).
async fn terminate(mut r: Running, grace: Duration) {
    if saldo_process::stop_group(&mut r.child, grace).await == saldo_process::Stopped::Killed {
        tracing::warn!(pid = r.pid, "handler ignored SIGTERM; killed it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_waits_double_from_the_minimum_to_the_maximum_and_stay_there() {
        let spec = HandlerSpec {
            program: PathBuf::from("/bin/true"),
            args: vec![],
            working_dir: PathBuf::from("."),
            startup_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            stop_grace: Duration::from_secs(1),
        };
        let waits: Vec<u64> = schedule(&spec)
            .take(7)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000, 1000]);
    }
}
