//! Why a delivery or timer invocation failed.

use saldo_store::{Detail, StoreError};

use super::ports::{BusError, PeerError};

/// Why a delivery or timer invocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// Can never succeed (HTTP 400: Event Grid dead-letters it, never retries).
    #[error("{0}")]
    Invalid(String),
    /// Not yet started (HTTP 503: retry).
    #[error("node is starting: {0}")]
    NotReady(String),
    /// The database failed (unavailable → 503, otherwise 500; both retried).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The topic did not take our events (retried by the next sweep: the ledger is the outbox).
    #[error("publishing failed: {0}")]
    Publish(#[source] BusError),
    /// A peer could not be reached or answered nonsense (catch-up skips it).
    #[error("peer: {0}")]
    Peer(#[source] PeerError),
    /// A broken invariant ended the work (a panic): HTTP 500, retried. The task's failure is
    /// kept as the source.
    #[error("internal error: {0}")]
    Internal(#[source] Detail),
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn a_store_failure_keeps_its_cause_and_its_message() {
        let io = std::io::Error::other("connection reset");
        let e = NodeError::from(StoreError::Unavailable(Detail::caused_by(
            "insert commands: connection reset",
            io,
        )));
        assert_eq!(
            e.to_string(),
            "database unavailable: insert commands: connection reset"
        );
        let cause = e
            .source()
            .and_then(Error::source)
            .expect("the cause is kept");
        assert_eq!(cause.to_string(), "connection reset");
    }

    #[test]
    fn a_publish_or_peer_failure_keeps_its_cause_and_its_message() {
        let io = std::io::Error::other("connection refused");
        let e = NodeError::Publish(BusError::caused_by("topic unavailable: refused", io));
        assert_eq!(
            e.to_string(),
            "publishing failed: topic unavailable: refused"
        );
        let cause = e.source().and_then(Error::source);
        assert_eq!(
            cause.map(ToString::to_string).as_deref(),
            Some("connection refused")
        );

        let io = std::io::Error::other("timed out");
        let e = NodeError::Peer(PeerError::caused_by(
            "GET http://p/api/status: timed out",
            io,
        ));
        assert_eq!(e.to_string(), "peer: GET http://p/api/status: timed out");
        let cause = e.source().and_then(Error::source);
        assert_eq!(cause.map(ToString::to_string).as_deref(), Some("timed out"));
        // A refusal described by its message alone has nothing beneath it.
        let e = NodeError::Peer(PeerError::new("GET http://p/api/status: 500"));
        assert!(e.source().and_then(Error::source).is_none());
    }
}
