//! The scenario of a run: the commands the API publishes and the chaos, drawn from the seed.

use rand::Rng;
use saldo_core::events::{Operation, ProductLine};

use super::{Action, World};

impl World {
    pub(super) fn gen_commands(&mut self) {
        let seed = self.report.seed;
        let line = |id: u64, op: Operation| ProductLine {
            id,
            ean: 4_000_000 + id,
            name: format!("Product {id}"),
            saldo: match op {
                Operation::Set(n) => Some(n),
                _ => None,
            },
            change: match op {
                Operation::Change(d) => Some(d),
                _ => None,
            },
        };
        let mut cmds = Vec::new();
        for id in 1..=self.cfg.products {
            cmds.push(vec![line(id, Operation::Set(self.rng.random_range(2..=8)))]);
        }
        while cmds.len() < self.cfg.commands {
            let roll: f64 = self.rng.random();
            let mut ids: Vec<u64> = (1..=self.cfg.products).collect();
            let lines = if roll < 0.65 {
                let k = self.rng.random_range(1..=2usize);
                let mut v = Vec::new();
                for _ in 0..k {
                    let id = ids.remove(self.rng.random_range(0..ids.len()));
                    v.push(line(id, Operation::Change(-self.rng.random_range(1..=3))));
                }
                v
            } else if roll < 0.75 {
                vec![line(
                    self.rng.random_range(1..=self.cfg.products),
                    Operation::Change(self.rng.random_range(1..=4)),
                )]
            } else if roll < 0.82 {
                vec![line(
                    self.rng.random_range(1..=self.cfg.products),
                    Operation::Set(self.rng.random_range(0..=6)),
                )]
            } else if roll < 0.87 {
                vec![line(
                    100 + self.rng.random_range(0..3),
                    Operation::Change(-1),
                )]
            } else {
                // A multi-line purchase over three products: all or nothing.
                ids.truncate(3);
                ids.iter()
                    .map(|id| line(*id, Operation::Change(-self.rng.random_range(1..=2))))
                    .collect()
            };
            cmds.push(lines);
        }
        for (i, lines) in cmds.into_iter().enumerate() {
            let tx = format!("tx-{seed}-{i}");
            self.commands.push((tx, lines));
            // The first commands stock the shelves; the rest arrive over the active phase.
            let t = if (i as u64) < self.cfg.products {
                i as i64 * 10
            } else {
                self.rng.random_range(500..self.cfg.active_ms)
            };
            self.at(t, Action::Command(i));
        }
    }

    pub(super) fn gen_chaos(&mut self) {
        let slots = Self::slot_count(&self.cfg);
        for _ in 0..self.cfg.chaos_events {
            let t = self.rng.random_range(1_000..self.cfg.active_ms);
            let down_for = self.rng.random_range(1_000..15_000);
            let i = self.rng.random_range(0..self.names.len());
            match self.rng.random_range(0..6) {
                0 | 1 => {
                    // One instance dies; its host restarts it soon.
                    let slot = self.rng.random_range(0..slots);
                    self.at(t, Action::Crash(i, slot));
                    let back = self.rng.random_range(200..5_000);
                    self.at(t + back, Action::Boot(i, slot));
                }
                2 => {
                    self.at(t, Action::CrashRegion(i));
                    self.at(t + down_for, Action::Restart(i));
                }
                3 => {
                    self.at(t, Action::Stop(i));
                    self.at(t + down_for, Action::Restart(i));
                }
                _ => {
                    self.at(t, Action::DbDown);
                    self.at(t + down_for / 4, Action::DbUp);
                }
            }
        }
    }
}
