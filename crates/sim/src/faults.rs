//! Fault injection for the store hook, the buses and the peer clients.

use rand::Rng;
use rand::rngs::StdRng;
use saldo_store::Fault;

/// Fault injection shared by the store hook, the buses and the peer clients; its own seeded
/// generator, switched off when the run heals.
pub(crate) struct Faults {
    pub(crate) rng: StdRng,
    pub(crate) on: bool,
    pub(crate) db_p: f64,
    pub(crate) publish_p: f64,
    pub(crate) peer_p: f64,
}

impl Faults {
    pub(crate) fn pick(&mut self, p: f64) -> Fault {
        if !self.on || !self.rng.random_bool(p) {
            Fault::None
        } else if self.rng.random_bool(0.5) {
            Fault::Before
        } else {
            Fault::After
        }
    }
    pub(crate) fn publish(&mut self) -> Fault {
        let p = self.publish_p;
        self.pick(p)
    }
    pub(crate) fn peer_fails(&mut self) -> bool {
        let p = self.peer_p;
        self.on && self.rng.random_bool(p)
    }
}
