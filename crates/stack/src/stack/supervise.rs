//! Supervision: restarting every component that dies, after its back-off.

use std::time::Duration;

use anyhow::Result;

use super::Stack;
use crate::component::Running;

impl Stack {
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
}
