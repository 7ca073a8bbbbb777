//! A local Azure Event Grid custom topic, faithful enough that code which works against it works
//! against Azure: publishing with keys and SAS tokens, ARM-shaped subscriptions with the
//! validation handshake, webhook delivery with Azure's batching, retry schedule, probation,
//! dead-lettering and TTL, and durability of accepted events across restarts.
//!
//! Modules: [`schema`] (validation of published events), [`auth`] (keys, SAS and Entra tokens),
//! [`entra`] (Bearer tokens of the identity stand-in), [`subscription`] (ARM resource, filters),
//! [`policy`] (retry rules, pure), [`rate`] (the publish rate limit), [`wal`] (persistence),
//! [`spill`] (a subscription's backlog beyond memory), [`deadletter`] (blob layout), [`config`],
//! [`topic`] (accepting events, subscriptions), `queue` (a subscription's state), `dispatch`
//! (delivery), `handshake`, [`http`] (routes).

pub mod auth;
pub mod config;
pub mod deadletter;
mod dispatch;
pub mod entra;
pub mod error;
mod handshake;
pub mod http;
pub mod policy;
mod queue;
pub mod rate;
pub mod schema;
pub mod spill;
pub mod subscription;
pub mod topic;
pub mod wal;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{Config, topic_resource_id};
pub use http::app;
pub use schema::InputSchema;
pub use topic::Topic;

/// A topic serving HTTP in the current runtime.
pub struct Running {
    pub addr: SocketAddr,
    pub topic: Arc<Topic>,
    pub server: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The publishing endpoint, `http://H:P/api/events`.
    pub fn endpoint(&self) -> String {
        format!("{}/api/events", self.url())
    }
}

/// Opens the topic and serves it on `addr` (port 0 picks a free port).
pub async fn spawn(config: Config, addr: SocketAddr) -> anyhow::Result<Running> {
    let topic = Topic::open(config).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let router = app(topic.clone());
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "server stopped");
        }
    });
    Ok(Running {
        addr,
        topic,
        server,
    })
}
