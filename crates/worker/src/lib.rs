//! The regional worker node.
//!
//! - [`node`]: the node's behaviour ([`Node`]: handle a delivery, sweep, heartbeat, catch up),
//!   generic over the store, the clock, the outbound bus and the peer client, so that the HTTP
//!   handlers and the deterministic simulation (`saldo-sim`) run the very same code; one
//!   submodule per job (delivery, execution, outbox, sweep, catch-up, liveness, reads).
//! - [`intake`]: a delivery's events sorted into those taken and those quarantined.
//! - [`http`]: the axum router (the Functions custom handler's routes).
//! - [`settings`]: configuration from the environment.
//! - [`adapters`]: the real clock, bus (Event Grid publisher) and peer client (HTTP).
//! - `testing` (feature `testing`): test doubles of the bus and the peer client, shared by the
//!   worker's and the simulation's suites.

pub mod adapters;
pub mod http;
pub mod intake;
pub mod node;
pub mod settings;
#[cfg(feature = "testing")]
pub mod testing;

pub use node::{
    Bus, BusError, Clock, Config, Delivery, ManualClock, Node, NodeError, PeerClient, PeerError,
    Probe, SystemClock,
};
