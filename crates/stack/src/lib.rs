//! The local Saldo stack: every stand-in for an Azure service, started in dependency order,
//! health-checked, supervised, and stopped cleanly.
//!
//! The `saldo` binary is a thin front over this crate, and whole-system tests drive it directly
//! (`Stack::start` with a temporary root and free ports), so what the tests prove is exactly what
//! `saldo up` runs.
//!
//! Adding a component is one `launch` call in `stack::start`: a [`component::Spec`] (built in
//! `stack::specs`) says how to start it and how to tell that it is healthy.

pub mod component;
pub mod config;
pub mod keys;
pub mod manifest;
pub mod ports;
pub mod seed;
pub mod stack;
pub mod supervisor;
pub mod venv;

pub use config::StackConfig;
pub use manifest::Manifest;
pub use stack::Stack;
