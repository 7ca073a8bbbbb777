//! The rules of Saldo, with no I/O.
//!
//! Everything in this crate is a pure function of its inputs: no sockets, no database, no clock
//! (time is always passed in), no randomness. That is what lets the same rules run in the worker
//! binary, in the API and in the deterministic simulation of the fleet.

pub mod events;
pub mod json;
pub mod ledger;
pub mod stock;
pub mod views;
