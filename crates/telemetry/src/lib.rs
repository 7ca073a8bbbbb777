//! Logging and tracing set-up shared by every Saldo binary.
//!
//! - Log levels come from `RUST_LOG` (default `info`); output is compact and human-readable on
//!   stderr.
//! - Every `tracing` span also becomes an OpenTelemetry span, so each span has a W3C trace id and
//!   span id whether or not anything is exported. That is what lets trace context cross every hop
//!   (HTTP headers, `data.traceparent` of Event Grid events; see `TRACING.md`).
//! - With `APPLICATIONINSIGHTS_CONNECTION_STRING` set, spans, their events and counters are
//!   exported to Application Insights through `opentelemetry-application-insights`:
//!   server spans (`otel.kind = "server"`) become requests, all other spans dependencies, events
//!   inside spans traces (messages), `ERROR` events and events with `exception.*` fields
//!   exceptions, and [`Counters`] metrics. The connection string's `IngestionEndpoint` decides
//!   where envelopes go, so a local receiver can stand in for Azure (see `testing`).
//!
//! Conventions for the other crates:
//! - a span that concerns one transaction carries `transaction`, `node` and `region` fields
//!   (they become custom properties in Application Insights);
//! - a span that receives work from elsewhere is made a child of the sender's context with
//!   [`set_parent`] *before* it is entered;
//! - `tracing::error!` is for failures an operator must see (it becomes an exception).
//!
//! Modules: `init` (the [`Config`] and [`init`]), `guard` (the [`Telemetry`] guard and its
//! bounded flush), `export` (the exporter's HTTP client), `context` (W3C trace context in and
//! out of spans), `console`, `exceptions` (the layers turning events into exceptions and log
//! records), `counters`, [`http`] (outgoing requests with trace context) and `testing` (a local
//! ingestion receiver, feature `test-util`).

mod console;
mod context;
mod counters;
mod exceptions;
mod export;
mod guard;
pub mod http;
mod init;
#[cfg(feature = "test-util")]
pub mod testing;

pub(crate) use context::current_headers;
pub use context::{current_traceparent, current_tracestate, set_parent, set_parent_with_state};
pub use counters::{Counters, export_counters};
pub use guard::{FLUSH_TIMEOUT, Telemetry};
pub use init::{CONNECTION_STRING_ENV, Config, init, init_with};
