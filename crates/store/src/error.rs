//! The store's errors: what kind of failure (it decides the HTTP status and what a sweep does),
//! the message users and logs see, and the error beneath it, kept as the source.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached, or stayed overloaded through our retries. Try later
    /// (a webhook answers 503 so that Event Grid retries).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Detail),
    /// The database is up but the write kept conflicting with other writers of the same
    /// documents through every retry (a hot product, many instances writing one ledger). Not an
    /// outage: try again soon (a webhook answers 503 with `Retry-After`, a sweep goes on with
    /// the next transaction).
    #[error("database contended: {0}")]
    Contended(#[source] Detail),
    /// The database answered something unexpected (a bug, corrupt data, a broken invariant).
    #[error("database error: {0}")]
    Failed(#[source] Detail),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// An error's message, and the error that caused it when there is one (the driver's, an
/// encoding's, a task's), so that the chain survives for whoever walks [`Error::source`]. The message is
/// what `Display` shows, as before the cause was kept; two details are equal when their
/// messages are (the cause is for reporting, not for deciding).
#[derive(Clone)]
pub struct Detail {
    message: String,
    cause: Option<Arc<dyn Error + Send + Sync>>,
}

impl Detail {
    /// A detail with no error beneath it.
    pub fn new(message: impl Into<String>) -> Self {
        Detail {
            message: message.into(),
            cause: None,
        }
    }

    /// A detail caused by `cause`.
    pub fn caused_by(
        message: impl Into<String>,
        cause: impl Error + Send + Sync + 'static,
    ) -> Self {
        Detail {
            message: message.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Shows the message only, as the `String` it replaced did.
impl fmt::Debug for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.message, f)
    }
}

impl Error for Detail {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

impl PartialEq for Detail {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}
impl Eq for Detail {}

impl From<String> for Detail {
    fn from(message: String) -> Self {
        Detail::new(message)
    }
}

impl From<&str> for Detail {
    fn from(message: &str) -> Self {
        Detail::new(message)
    }
}

impl From<Detail> for String {
    fn from(d: Detail) -> Self {
        d.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_the_source_and_the_message_is_unchanged() {
        let io = std::io::Error::other("connection reset");
        let e = StoreError::Unavailable(Detail::caused_by("execute: connection reset", io));
        assert_eq!(
            e.to_string(),
            "database unavailable: execute: connection reset"
        );
        let detail = e.source().expect("the detail is the source");
        assert_eq!(detail.to_string(), "execute: connection reset");
        let cause = detail.source().expect("the cause is kept");
        assert_eq!(cause.to_string(), "connection reset");
        assert_eq!(
            format!("{e:?}"),
            r#"Unavailable("execute: connection reset")"#
        );
        assert_eq!(
            e,
            StoreError::Unavailable("execute: connection reset".into())
        );
    }
}
