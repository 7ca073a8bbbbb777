//! Classifying driver errors (throttled, conflicting, unavailable, failed) and retrying
//! operations with bounded, jittered back-off within the store's time bound.

use std::time::Duration;

use mongodb::error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR, WriteFailure};

use super::MongoStore;
use crate::origin::Kind;
use crate::{Detail, Result, StoreError};

/// Attempts per operation for retryable server errors (16500, 112, transient transaction errors).
pub const MAX_ATTEMPTS: usize = 8;
pub(super) const BACKOFF_BASE: Duration = Duration::from_millis(20);
pub(super) const BACKOFF_CAP: Duration = Duration::from_millis(2000);
/// Cosmos DB ends a multi-document transaction after 5 s (the local stand-in is started with the
/// same limit, `tools/secantusd.py`). A writer that stopped half-way (its instance SIGKILLed or
/// SIGSTOPped) holds the documents it wrote, the ledger's counter among them, that long at most.
pub const TRANSACTION_LIFETIME: Duration = Duration::from_secs(5);
/// A transaction's retries sleep this long in all at most, and at least this less twice
/// [`TRANSACTION_BACKOFF_CAP`] (the schedule stops before a sleep that would overrun it, and
/// jitter can double a sleep): 5 to 7 s, no less than [`TRANSACTION_LIFETIME`], so that a
/// stalled writer cannot make the others of its region give up and answer 503 (and wait out
/// Event Grid's retry schedule); less than the store's default timeout.
pub(super) const TRANSACTION_RETRY_BUDGET: Duration = Duration::from_secs(7);
/// A conflicting transaction's rival holds the hot document for a few round trips (group
/// commit makes each transaction carry everything queued, not longer): sleeping up to a second
/// after a few conflicts left an instance that lost a few times in a row idle while its queue
/// grew, and showed as a p99 of seconds. Short sleeps, more of them, within the same budget.
pub(super) const TRANSACTION_BACKOFF_CAP: Duration = Duration::from_millis(200);
const _: () = assert!(
    TRANSACTION_RETRY_BUDGET.as_millis() - 2 * TRANSACTION_BACKOFF_CAP.as_millis()
        >= TRANSACTION_LIFETIME.as_millis()
);
/// Attempts of one transaction at most (the budget ends it first unless the conflicts are
/// quick): a bound on the loop either way.
pub const MAX_TRANSACTION_ATTEMPTS: usize = 64;

pub(super) const DUPLICATE_KEY: i32 = 11000;
pub(super) const WRITE_CONFLICT: i32 = 112;
pub(super) const TOO_MANY_REQUESTS: i32 = 16500;

/// The server error code of an error, if it has one.
pub(super) fn code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        // Per-document errors: report the one that decides what to do. Throttling or a
        // conflict on any document makes the batch worth retrying (the documents that did get
        // in come back as duplicates then); otherwise the first error.
        ErrorKind::InsertMany(im) => {
            let errors = im.write_errors.as_deref().unwrap_or_default();
            errors
                .iter()
                .find(|w| matches!(w.code, TOO_MANY_REQUESTS | WRITE_CONFLICT))
                .or(errors.first())
                .map(|w| w.code)
                .or(im.write_concern_error.as_ref().map(|w| w.code))
        }
        _ => None,
    }
}

/// Whether retrying the same operation soon may succeed.
pub(super) fn retryable(e: &mongodb::error::Error) -> bool {
    throttled(e) || conflicted(e)
}

/// The RU budget is spent (Cosmos DB's 16500).
pub(super) fn throttled(e: &mongodb::error::Error) -> bool {
    code(e) == Some(TOO_MANY_REQUESTS)
}

/// Another writer touched the same document (112, or a transaction the server aborted for it).
pub(super) fn conflicted(e: &mongodb::error::Error) -> bool {
    code(e) == Some(WRITE_CONFLICT) || e.contains_label(TRANSIENT_TRANSACTION_ERROR)
}

/// Maps a driver error to the store's kinds: unavailable (try later, 503), contended (the
/// conflict retries are spent: the database is fine, the document is hot) or failed.
pub(super) fn classify(what: &str, e: mongodb::error::Error) -> StoreError {
    if conflicted(&e) && !throttled(&e) {
        let message = format!("{what}: still conflicting after retries: {e}");
        return StoreError::Contended(Detail::caused_by(message, e));
    }
    let unavailable = matches!(
        e.kind.as_ref(),
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
            | ErrorKind::Shutdown
    ) || retryable(&e)
        || e.contains_label("RetryableWriteError")
        || matches!(
            code(&e),
            Some(6 | 7 | 89 | 91 | 189 | 9001 | 10107 | 11600 | 11602 | 13435 | 13436)
        );
    let detail = Detail::caused_by(format!("{what}: {e}"), e);
    if unavailable {
        StoreError::Unavailable(detail)
    } else {
        StoreError::Failed(detail)
    }
}

/// The retry schedule: exponential back-off with full jitter, so that writers that conflicted
/// together do not retry together; [`MAX_ATTEMPTS`] attempts in all.
pub(super) fn backoff_schedule() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(BACKOFF_BASE)
        .with_max_delay(BACKOFF_CAP)
        .with_max_times(MAX_ATTEMPTS - 1)
        .with_jitter()
        .build()
}

/// The retry schedule of a multi-document transaction: the same back-off, bounded by
/// [`TRANSACTION_RETRY_BUDGET`] of sleep (and [`MAX_TRANSACTION_ATTEMPTS`] attempts).
pub(super) fn transaction_backoff_schedule() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(BACKOFF_BASE)
        .with_max_delay(TRANSACTION_BACKOFF_CAP)
        .with_max_times(MAX_TRANSACTION_ATTEMPTS - 1)
        .with_total_delay(Some(TRANSACTION_RETRY_BUDGET))
        .with_jitter()
        .build()
}

impl MongoStore {
    /// Runs `f` within the store's time bound.
    pub(super) async fn bounded<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(elapsed) => Err(StoreError::Unavailable(Detail::caused_by(
                format!("{what}: no answer within {} ms", self.timeout.as_millis()),
                elapsed,
            ))),
        }
    }

    /// Runs one database operation with bounded retries of throttling and write conflicts,
    /// counting every attempt as a round trip. Returns the driver's error for inspection.
    pub(super) async fn retry_raw<T, F, Fut>(
        &self,
        what: &str,
        kind: Kind,
        mut f: F,
    ) -> mongodb::error::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    {
        let mut delays = backoff_schedule();
        loop {
            self.count(kind);
            match f().await {
                Err(e) if retryable(&e) => match delays.next() {
                    Some(wait) => {
                        tracing::debug!(what, error = %e, ?wait, "retrying database operation");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// Runs `f` (one round trip of `kind`), retrying throttling and transient errors, within
    /// the store's time bound.
    pub(super) async fn retry<T, F, Fut>(&self, what: &str, kind: Kind, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    {
        self.bounded(what, async {
            self.retry_raw(what, kind, f)
                .await
                .map_err(|e| classify(what, e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;

    use super::*;

    /// A server's answer with `code`, as the driver reports a failed command.
    fn server_error(code: i32) -> mongodb::error::Error {
        let c: mongodb::error::CommandError =
            mongodb::bson::from_document(doc! {"code": code, "codeName": "X", "errmsg": "refused"})
                .expect("a command error");
        mongodb::error::Error::from(ErrorKind::Command(c))
    }

    /// SecantusDB never throttles, so no test over a server sees a 16500: what the store does
    /// with one is pinned here. Throttling and conflicts are retried; throttling that outlasts
    /// the retries is an outage (503), a conflict that does is contention.
    #[test]
    fn throttling_is_retried_and_then_unavailable_a_conflict_contended() {
        let throttled = server_error(TOO_MANY_REQUESTS);
        assert!(retryable(&throttled));
        assert!(matches!(
            classify("insert", throttled),
            StoreError::Unavailable(_)
        ));
        let conflict = server_error(WRITE_CONFLICT);
        assert!(retryable(&conflict));
        assert!(matches!(
            classify("insert", conflict),
            StoreError::Contended(_)
        ));
        let other = server_error(2);
        assert!(!retryable(&other));
        assert!(matches!(classify("insert", other), StoreError::Failed(_)));
    }

    #[test]
    fn the_retry_schedule_is_bounded() {
        let delays: Vec<Duration> = backoff_schedule().collect();
        assert_eq!(delays.len(), MAX_ATTEMPTS - 1);
        assert!(delays.iter().all(|d| *d < 2 * BACKOFF_CAP), "{delays:?}");
    }

    /// Whatever the jitter draws, a transaction's retries sleep at least as long as the
    /// database keeps a stalled writer's transaction, and never past the budget.
    #[test]
    fn a_transactions_retries_outlast_a_stalled_writer() {
        for _ in 0..1_000 {
            let delays: Vec<Duration> = transaction_backoff_schedule().collect();
            let slept: Duration = delays.iter().sum();
            assert!(slept >= TRANSACTION_LIFETIME, "{slept:?} over {delays:?}");
            assert!(slept <= TRANSACTION_RETRY_BUDGET, "{slept:?}");
            // The budget ends the schedule, not the bound on attempts.
            assert!(delays.len() < MAX_TRANSACTION_ATTEMPTS - 1, "{delays:?}");
        }
    }
}
