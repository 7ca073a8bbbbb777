//! The `idempotency` collection: one document per accepted command, written *before* the command
//! is published, so a retried request finds its first attempt and never buys twice.
//!
//! The document's `_id` is the transaction id, which is the UUIDv5 of the idempotency key: unique
//! on the key by construction, with no secondary index to create (Cosmos DB for MongoDB can only
//! add a unique index to an empty collection), and `GET /api/transactions/{id}` finds a
//! just-accepted command by `_id` too. The stored key is compared on every read, so even a UUID
//! collision could not hand one client another's transaction.
//!
//! Records are kept forever for now (see the report: a TTL policy is future work).

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, ClientOptions, CollectionOptions, WriteConcern};
use mongodb::{Client, Collection};
use saldo_core::events::{EventGridEvent, RecordUpdated};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

pub const COLLECTION: &str = "idempotency";
const DUPLICATE_KEY: i32 = 11000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The transaction id (= event id).
    #[serde(rename = "_id")]
    pub transaction: String,
    /// The client's Idempotency-Key, or one the API made up for a request without one.
    pub key: String,
    /// [`crate::commands::Intent::fingerprint`] of the request.
    pub request_hash: String,
    /// The exact event, JSON: a retry republishes it unchanged (same id, time and lines).
    pub event: String,
    /// RFC 3339 (a string, so no BSON date conversion is needed).
    pub accepted_at: String,
    /// Set once the topic acknowledged the event.
    pub published: bool,
    /// The caller's user id, when signed in (for audit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl Record {
    pub fn event(&self) -> Result<EventGridEvent<RecordUpdated>, ApiError> {
        serde_json::from_str(&self.event).map_err(|e| {
            ApiError::Internal(format!(
                "stored event of {} is unreadable: {e}",
                self.transaction
            ))
        })
    }

    pub fn accepted_at(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.accepted_at)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

pub enum Insert {
    Inserted,
    /// A record with this transaction id exists already (a concurrent request with the same key).
    Exists,
}

#[derive(Clone)]
pub struct IdempotencyStore {
    records: Collection<Record>,
    /// Bounds every operation, on top of the driver's own server-selection timeout.
    timeout: Duration,
}

impl IdempotencyStore {
    /// Connects lazily: a database that is down makes requests fail with 503, not start-up.
    pub async fn connect(uri: &str, database: &str, timeout: Duration) -> anyhow::Result<Self> {
        let mut opts = ClientOptions::parse(uri).await?;
        opts.server_selection_timeout.get_or_insert(timeout);
        opts.connect_timeout.get_or_insert(timeout);
        // Cosmos DB closes idle connections after about 4 minutes; drop them first.
        opts.max_idle_time.get_or_insert(Duration::from_secs(120));
        opts.app_name.get_or_insert_with(|| "saldo-api".into());
        let client = Client::with_options(opts)?;
        // Majority + journal: a record the API relied on (before publishing) survives a failover.
        let durable = CollectionOptions::builder()
            .write_concern(
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build(),
            )
            .build();
        let records = client
            .database(database)
            .collection_with_options(COLLECTION, durable);
        Ok(Self { records, timeout })
    }

    async fn bounded<T>(
        &self,
        what: &str,
        op: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, mongodb::error::Error> {
        match tokio::time::timeout(self.timeout * 2, op.into_future()).await {
            Ok(r) => r,
            Err(_) => Err(mongodb::error::Error::custom(format!("{what} timed out"))),
        }
    }

    /// The same collection, untyped (the reconciler reads and counts on records by field).
    pub fn documents(&self) -> Collection<mongodb::bson::Document> {
        self.records.clone_with_type()
    }

    pub async fn get(&self, transaction: &str) -> Result<Option<Record>, ApiError> {
        self.bounded("read", self.records.find_one(doc! {"_id": transaction}))
            .await
            .map_err(|e| unavailable("read the idempotency record", e))
    }

    pub async fn insert(&self, record: &Record) -> Result<Insert, ApiError> {
        match self
            .bounded("insert", self.records.insert_one(record))
            .await
        {
            Ok(_) => Ok(Insert::Inserted),
            Err(e) if is_duplicate(&e) => Ok(Insert::Exists),
            Err(e) => Err(unavailable("store the idempotency record", e)),
        }
    }

    pub async fn mark_published(&self, transaction: &str) -> Result<(), ApiError> {
        self.bounded(
            "update",
            self.records.update_one(
                doc! {"_id": transaction},
                doc! {"$set": {"published": true}},
            ),
        )
        .await
        .map(|_| ())
        .map_err(|e| unavailable("mark the command published", e))
    }
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY)
}

/// Every database failure is answered 503: the request changed nothing the client can see, and
/// the same request (same key) may be retried.
fn unavailable(what: &str, e: mongodb::error::Error) -> ApiError {
    ApiError::DatabaseUnavailable(format!("could not {what}: {e}"))
}
