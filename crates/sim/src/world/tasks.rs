//! Handler tasks: spawning, stepping one database call at a time, and the timer functions.

use std::task::Poll;

use rand::Rng;

use super::{Action, HandlerFuture, Job, Life, Task, World, noop_context};

impl World {
    pub(super) fn spawn(&mut self, instance: u64, job: Job, fut: HandlerFuture) -> u64 {
        self.next_task += 1;
        let id = self.next_task;
        self.tasks.insert(
            id,
            Task {
                fut,
                instance,
                job,
                polls: 0,
            },
        );
        let now = self.now_ms();
        self.at(now, Action::Step(id));
        id
    }

    /// Runs a task to its next database call (or its end).
    pub(super) fn step(&mut self, id: u64) -> Result<(), String> {
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(()); // lost in a crash
        };
        task.polls += 1;
        if task.polls > 100_000 {
            return Err(format!("a {:?} handler never finished", task.job));
        }
        let mut cx = noop_context();
        match task.fut.as_mut().poll(&mut cx) {
            Poll::Pending => {
                // A database call is on the wire: it takes effect when the task next runs.
                self.report.steps += 1;
                let now = self.now_ms();
                let d = self.rng.random_range(0..=self.cfg.db_latency_ms);
                self.at(now + d, Action::Step(id));
                Ok(())
            }
            Poll::Ready(out) => {
                let task = self.tasks.remove(&id).expect("task");
                match (task.job, out) {
                    (
                        Job::Delivery {
                            to,
                            events,
                            attempt,
                        },
                        Some(result),
                    ) => self.delivered(to, events, attempt, result),
                    _ => Ok(()),
                }
            }
        }
    }

    /// A timer fires on the region's timer instance; like Azure Functions' timer triggers it
    /// does not start while its previous run is still going.
    pub(super) fn timer(&mut self, i: usize, which: usize) {
        if self.life[i] != Life::Up {
            return;
        }
        if let Some(id) = self.timer_tasks[i][which]
            && self.tasks.contains_key(&id)
        {
            return;
        }
        let Some(inst) = self.slots[i].last().and_then(|s| s.as_ref()) else {
            return;
        };
        let (node, uid) = (inst.node.clone(), inst.uid);
        let (job, fut): (Job, HandlerFuture) = if which == 0 {
            (
                Job::Sweep,
                Box::pin(async move {
                    let _ = node.sweep().await;
                    None
                }),
            )
        } else {
            (
                Job::Heartbeat,
                Box::pin(async move {
                    let _ = node.heartbeat().await;
                    None
                }),
            )
        };
        let id = self.spawn(uid, job, fut);
        self.timer_tasks[i][which] = Some(id);
    }
}
