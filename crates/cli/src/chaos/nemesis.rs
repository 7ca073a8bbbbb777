//! The nemesis: what a fault can act on, injecting one fault, holding and lifting it, and
//! waiting for its target to answer again; and what to undo when interrupted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use saldo_stack::Manifest;
use saldo_stack::component::Health;
use saldo_stack::manifest::HostAction;
use serde::Serialize;

use super::{Kind, Planned};
use crate::load::Shop;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    pub kind: Kind,
    pub target: String,
    pub start_ms: u64,
    /// When the target answered again (or the fault was lifted and it answered).
    pub healed_ms: u64,
    pub recovered: bool,
    pub detail: String,
}

/// What a fault can act on, from the manifest (read again before each fault: a supervisor that
/// restarts a process changes its pid).
struct Target {
    name: String,
    pgid: i32,
    health: Health,
}

fn targets(m: &Manifest) -> Vec<Target> {
    m.processes
        .iter()
        .filter_map(|p| {
            let health = if p.name == "mongodb" {
                Health::mongodb(&m.mongodb.as_ref()?.uri)
            } else if p.name == "topic" {
                Health::topic(&m.topic.as_ref()?.management)
            } else if p.name == "api" {
                Health::api(&m.api.as_ref()?.url)
            } else if let Some(region) = p.name.strip_prefix("worker-") {
                Health::worker(&m.node(region)?.url)
            } else {
                return None;
            };
            Some(Target {
                name: p.name.clone(),
                pgid: p.pid,
                health,
            })
        })
        .collect()
}

/// The children of `pid` (a host's handler instances), from /proc.
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out.sort();
    out
}

async fn wait_healthy(h: &Health, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if h.probe().await.is_ok() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What must be undone if chaos is interrupted mid-fault.
#[derive(Clone)]
pub(super) enum Undo {
    Cont(Vec<i32>),
    Start(saldo_stack::manifest::NodeEntry),
}

pub(super) async fn undo(u: &Undo) {
    match u {
        Undo::Cont(pids) => {
            for p in pids {
                let _ = kill(Pid::from_raw(*p), Signal::SIGCONT);
            }
        }
        Undo::Start(node) => {
            if let Err(e) = node.control(HostAction::Start).await {
                eprintln!("saldo chaos: could not start {} again: {e:#}", node.region);
            }
        }
    }
}

/// Applies one fault, holds it, lifts it and waits until the target answers again.
async fn inject(
    root: &Path,
    p: &Planned,
    shop: &Shop,
    recover: Duration,
    pending_undo: &Mutex<Option<Undo>>,
) -> Result<Fault> {
    let m = Manifest::load(root)?;
    let all = targets(&m);
    let pick = |names: &dyn Fn(&str) -> bool| -> Result<&Target> {
        let c: Vec<&Target> = all.iter().filter(|t| names(&t.name)).collect();
        if c.is_empty() {
            bail!("no target for {}", p.kind.name());
        }
        Ok(c[p.target as usize % c.len()])
    };
    let start_ms = shop.ms();
    let hold = Duration::from_millis(p.hold_ms);
    let (t, detail) = match p.kind {
        Kind::KillDb | Kind::KillTopic | Kind::KillHost | Kind::KillApi => {
            let t = pick(&|n| match p.kind {
                Kind::KillDb => n == "mongodb",
                Kind::KillTopic => n == "topic",
                Kind::KillApi => n == "api",
                _ => n.starts_with("worker-"),
            })?;
            (t, kill_group(t)?)
        }
        Kind::KillHandler => {
            let t = pick(&|n| n.starts_with("worker-"))?;
            (t, kill_handler(t, p)?)
        }
        Kind::Pause => {
            let t = pick(&|n| n != "spa")?;
            (t, pause(t, p, hold, pending_undo).await)
        }
        Kind::Region => {
            let t = pick(&|n| n.starts_with("worker-"))?;
            (t, stop_region(&m, t, p, hold, pending_undo).await?)
        }
    };
    let (target, health) = (t.name.clone(), t.health.clone());
    let recovered = wait_healthy(&health, recover).await;
    Ok(Fault {
        kind: p.kind,
        target,
        start_ms,
        healed_ms: shop.ms(),
        recovered,
        detail,
    })
}

/// SIGKILL of a component's whole process group.
fn kill_group(t: &Target) -> Result<String> {
    killpg(Pid::from_raw(t.pgid), Signal::SIGKILL)
        .with_context(|| format!("SIGKILL {} (group {})", t.name, t.pgid))?;
    Ok(format!("SIGKILL group {}", t.pgid))
}

/// SIGKILL of one handler instance of a region's host.
fn kill_handler(t: &Target, p: &Planned) -> Result<String> {
    let kids = children(t.pgid);
    if kids.is_empty() {
        bail!("{} has no handler process to kill", t.name);
    }
    let victim = kids[(p.target as usize / 7) % kids.len()];
    kill(Pid::from_raw(victim), Signal::SIGKILL)
        .with_context(|| format!("SIGKILL handler {victim} of {}", t.name))?;
    Ok(format!(
        "SIGKILL handler pid {victim} (1 of {})",
        kids.len()
    ))
}

/// SIGSTOP for `hold`, then SIGCONT: a region's handler instance, or the whole process group
/// of anything else.
async fn pause(
    t: &Target,
    p: &Planned,
    hold: Duration,
    pending_undo: &Mutex<Option<Undo>>,
) -> String {
    let pids = if t.name.starts_with("worker-") {
        let kids = children(t.pgid);
        match kids.get((p.target as usize / 7) % kids.len().max(1)) {
            Some(k) => vec![*k],
            None => vec![t.pgid],
        }
    } else {
        let mut v = vec![t.pgid];
        v.extend(children(t.pgid));
        v
    };
    *pending_undo.lock().unwrap() = Some(Undo::Cont(pids.clone()));
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
    }
    tokio::time::sleep(hold).await;
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGCONT);
    }
    *pending_undo.lock().unwrap() = None;
    format!("SIGSTOP {pids:?} for {} ms", p.hold_ms)
}

/// The region's app stopped for `hold` (403 to everything), then started again.
async fn stop_region(
    m: &Manifest,
    t: &Target,
    p: &Planned,
    hold: Duration,
    pending_undo: &Mutex<Option<Undo>>,
) -> Result<String> {
    let region = t.name.trim_start_matches("worker-");
    let node = m.require_node(region)?.clone();
    node.control(HostAction::Stop).await?;
    *pending_undo.lock().unwrap() = Some(Undo::Start(node.clone()));
    tokio::time::sleep(hold).await;
    node.control(HostAction::Start).await?;
    *pending_undo.lock().unwrap() = None;
    Ok(format!("stopped for {} ms", p.hold_ms))
}

/// Runs the schedule between `window.0` and `window.1`, one fault at a time; returns the faults
/// injected and the ones that could not be.
pub(super) fn spawn(
    root: PathBuf,
    shop: Shop,
    schedule: Vec<Planned>,
    recover: Duration,
    window: (Instant, Instant),
    pending_undo: Arc<Mutex<Option<Undo>>>,
) -> tokio::task::JoinHandle<(Vec<Fault>, Vec<String>)> {
    let (faults_from, faults_until) = window;
    tokio::spawn(async move {
        let mut done: Vec<Fault> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        tokio::time::sleep_until(faults_from.into()).await;
        for p in &schedule {
            tokio::time::sleep(Duration::from_millis(p.gap_ms)).await;
            if Instant::now() + Duration::from_millis(p.hold_ms) > faults_until {
                break;
            }
            match inject(&root, p, &shop, recover, &pending_undo).await {
                Ok(f) => {
                    println!(
                        "  {:>6.1} s  {:<12} {:<24} {} ({} in {:.1} s)",
                        f.start_ms as f64 / 1000.0,
                        f.kind.name(),
                        f.target,
                        f.detail,
                        if f.recovered {
                            "answered again"
                        } else {
                            "DID NOT COME BACK"
                        },
                        (f.healed_ms - f.start_ms) as f64 / 1000.0
                    );
                    done.push(f);
                }
                Err(e) => {
                    println!("  {} failed: {e:#}", p.kind.name());
                    errors.push(format!("{}: {e:#}", p.kind.name()));
                }
            }
        }
        (done, errors)
    })
}
