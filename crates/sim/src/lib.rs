//! A deterministic simulation of the worker fleet as Azure runs it.
//!
//! Every region is a Function App on Flex Consumption: several HTTP instances (the webhook, the
//! reads, the ledger feed) over the region's one ledger, and the timer functions (heartbeat,
//! sweep) on an instance of their own that gets no HTTP traffic. The instances are the real
//! [`saldo_worker::Node`]s (the very code the HTTP handlers call) over one shared [`MemDb`];
//! each has its own clock, off the simulation's time by seconds either way and drawn again when
//! the instance restarts (so a restarted instance's clock may jump back). Deliveries and peer
//! calls to a region reach any of its HTTP instances.
//!
//! Handlers interleave at database-call granularity: every handler (a delivery, a sweep, a
//! heartbeat, a start-up) is a task, every database call of it a step of its own that takes
//! simulated time, and other handlers' steps, deliveries and chaos run in between. Everything
//! random is drawn from one seeded generator and the tasks are polled one at a time, so a seed
//! replays exactly.
//!
//! The topic delivers every published event to every region at least once, late, reordered,
//! sometimes twice, sometimes never (a drop, dead-lettered), in batches that mix in earlier
//! events, malformed events and events of another data version; it retries failed deliveries
//! like Event Grid (5xx: later; 403 from a stopped region or 400: dead-lettered at once).
//! Instances crash (losing their memory and whatever handler was running, keeping their
//! ledgers) and are restarted by the host, whole regions crash or stop and start, the database
//! goes down, and individual database operations fail before or after taking effect (a lost
//! reply, an unknown commit result) or as contended. Then everything heals and the run goes on
//! until the fleet should have converged.
//!
//! Checked while running:
//! - **Acknowledged means recorded.** When an instance answers a delivery 2xx, every valid
//!   command in it is in the region's ledger at that moment and every bad event in its
//!   quarantine; a delivery is refused (400) only if nothing in it is valid.
//!
//! Checked after each run (see `world::check`):
//! 1. No transaction is applied to the warehouse twice, and each application changed exactly
//!    what its command says, starting from the stock the previous application left (no lost
//!    or doubled update).
//! 2. Stock never goes below zero (also asserted at every write by the store).
//! 3. Every command accepted by any node (in any ledger) has been executed: a marker exists;
//!    every command the API published either has a marker or was dead-lettered by every region
//!    (it is named in [`Report::undeliverable`]); no ledger holds anything but commands.
//! 4. Every node's ledger holds every transaction any ledger holds, none pending, each with the
//!    marker's outcome (status and executor); no instance saw conflicting outcomes.
//! 5. The feed never skipped: for every reader region and peer, every entry of the peer's
//!    ledger numbered at or below the reader's stored cursor was served to the reader in that
//!    state.
//!
//! Modules: `config` (the knobs of a run, and its [`Report`]), `adapters` (the clock, topic and
//! peer network the nodes see), `faults` (seeded fault injection), `many` (many seeds over threads), and `world` (the simulated
//! fleet: its instances, handler tasks, Event Grid, the scenario, the run loop and the checks).

mod adapters;
mod config;
mod faults;
mod many;
mod world;

pub use adapters::{Directory, SimBus, SimClock, SimNode, SimPeers, Topic};
pub use config::{Report, SimConfig};
pub use many::run_seeds;
pub use world::run;
