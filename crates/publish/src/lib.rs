//! Event Grid publisher shared by the API and the workers.
//!
//! The same code publishes to the local emulator (topic key or SAS token) and to Azure (Entra
//! token from the managed identity); which one is chosen by configuration
//! ([`Publisher::from_env`]), never by the caller.

//!
//! Modules: `publisher` (the [`Publisher`] and its credentials, re-exported here) and [`sas`]
//! (the one SAS signer and verifier, shared with the emulator).

mod publisher;
pub mod sas;

pub use publisher::*;
