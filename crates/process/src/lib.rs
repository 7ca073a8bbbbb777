//! Stopping a child process and everything it started, in one place.
//!
//! `saldo up` runs every component, and the Functions host stand-in runs every handler instance,
//! as the leader of its own process group (`Command::process_group(0)`), so that one signal to the
//! group reaches whatever the child started (the host's handler, the SWA CLI's node children).
//! [`stop_group`] is the one way both stop such a group: SIGTERM to the group, SIGKILL to the
//! group after a grace period (or at once for what the leader left behind), then a bounded wait
//! until the group is empty, so that "stopped" means no process is left and no port is bound.
//! [`terminated`] is the other end: what every Saldo server waits on to stop gracefully.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;

/// Resolves at the first Ctrl-C or SIGTERM: how [`stop_group`], the Functions host and Azure ask
/// a process to stop. Every Saldo server waits on it to stop gracefully (requests in flight
/// finish, the telemetry guard flushes its last batch). The SIGTERM handler is installed when
/// the future is first polled.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// How long [`stop_group`] waits, after SIGKILL, for the group's last members to be reaped. The
/// leader's children are reaped by init, not by us, which takes a moment; the kernel has already
/// been told to kill them, so this only bounds how long we watch.
const EMPTY_WAIT: Duration = Duration::from_secs(5);

/// How a group was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The leader exited within the grace period after SIGTERM.
    Terminated,
    /// The leader ignored SIGTERM for the whole grace period and was killed.
    Killed,
}

/// Stops the process group led by `child` (which must have been spawned with
/// `process_group(0)`): SIGTERM to the group; if the leader has not exited after `grace`, SIGKILL.
/// Whatever is left in the group after the leader exited (children it left behind) gets SIGKILL
/// too. Returns once the leader is reaped and the group is empty, or [`EMPTY_WAIT`] after that.
pub async fn stop_group(child: &mut Child, grace: Duration) -> Stopped {
    let Some(pid) = child.id() else {
        // Already reaped: only what it left behind can remain.
        return Stopped::Terminated;
    };
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    let how = match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => Stopped::Terminated,
        Err(_) => {
            tracing::warn!(
                pid,
                ?grace,
                "process group did not stop after SIGTERM; killing it"
            );
            Stopped::Killed
        }
    };
    // A group with no process left answers ESRCH, which is fine.
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait().await;
    wait_empty(group, EMPTY_WAIT).await;
    how
}

/// SIGKILL to the group `pgid` leads, at once and without waiting (the synchronous last resort
/// of a `Drop`, or the clean-up after a leader died on its own).
pub fn kill_group(pgid: u32) {
    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
}

/// Is any process of the group `pgid` leads still alive (zombies count until reaped)?
pub fn group_alive(pgid: u32) -> bool {
    killpg(Pid::from_raw(pgid as i32), None).is_ok()
}

async fn wait_empty(group: Pid, bound: Duration) {
    let deadline = Instant::now() + bound;
    while killpg(group, None).is_ok() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::process::Command;

    fn group_of(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("sh")
    }

    /// The child reports that its traps are set by creating `ready`; waiting for that file is
    /// what makes the signal land after the trap, not a sleep.
    async fn wait_ready(ready: &std::path::Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "the child never got ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_leader_that_stops_on_sigterm_is_not_killed_and_its_children_go_too() {
        let dir = std::env::temp_dir().join(format!("saldo-process-{}-a", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ready = dir.join("ready");
        // The leader leaves a child behind that ignores SIGTERM: only the SIGKILL to the group,
        // after the leader exited, ends it.
        let mut child = group_of(&format!(
            "sh -c 'trap \"\" TERM; while :; do sleep 1; done' & touch {}; wait",
            ready.display()
        ));
        let pgid = child.id().unwrap();
        wait_ready(&ready).await;
        let how = stop_group(&mut child, Duration::from_secs(10)).await;
        assert_eq!(how, Stopped::Terminated);
        assert!(
            !group_alive(pgid),
            "a process of the group outlived stop_group"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_leader_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let dir = std::env::temp_dir().join(format!("saldo-process-{}-b", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ready = dir.join("ready");
        let mut child = group_of(&format!(
            "trap '' TERM; touch {}; while :; do sleep 1; done",
            ready.display()
        ));
        let pgid = child.id().unwrap();
        wait_ready(&ready).await;
        let how = stop_group(&mut child, Duration::from_millis(200)).await;
        assert_eq!(how, Stopped::Killed);
        assert!(!group_alive(pgid));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
