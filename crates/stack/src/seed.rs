//! The demo catalogue, published through the topic like any warehouse update.
//!
//! The seed is one `recordUpdated` command with a fixed transaction id. Workers execute a
//! transaction id at most once, ever, so publishing it on every start is harmless: the first start
//! of a fresh stack fills the warehouse, later starts change nothing (stock bought since survives).

use anyhow::{Context, Result};
use chrono::Utc;
use saldo_core::events::{
    DATA_VERSION, EventGridEvent, ProductLine, RECORD_UPDATED, RecordUpdated,
};
use saldo_publish::Publisher;

use crate::manifest::Manifest;

/// Transaction id of the seed. Bump the version to re-seed existing stacks on purpose.
pub const SEED_TRANSACTION: &str = "seed-catalogue-v1";

/// (id, ean, name, saldo). The design plan's Orange is product 1.
pub const CATALOGUE: [(u64, u64, &str, i64); 6] = [
    (1, 1111, "Orange", 25),
    (2, 2222, "Apple", 40),
    (3, 3333, "Banana", 30),
    (4, 4444, "Lemon", 12),
    (5, 5555, "Kiwi", 8),
    (6, 6666, "Mango", 3),
];

pub fn seed_event() -> EventGridEvent<RecordUpdated> {
    set_quantities(
        SEED_TRANSACTION,
        "warehouse/products/seed",
        CATALOGUE
            .iter()
            .map(|&(id, ean, name, saldo)| (id, ean, name.to_string(), saldo)),
    )
}

/// A `recordUpdated` command setting absolute quantities: `(id, ean, name, saldo)` per product.
/// The transaction id is the event id.
pub fn set_quantities(
    transaction: &str,
    subject: &str,
    products: impl IntoIterator<Item = (u64, u64, String, i64)>,
) -> EventGridEvent<RecordUpdated> {
    EventGridEvent {
        id: transaction.into(),
        event_type: RECORD_UPDATED.into(),
        subject: subject.into(),
        event_time: Utc::now(),
        data: RecordUpdated {
            transaction: Some(transaction.into()),
            products: products
                .into_iter()
                .map(|(id, ean, name, saldo)| ProductLine {
                    id,
                    ean,
                    name,
                    saldo: Some(saldo),
                    change: None,
                })
                .collect(),
            traceparent: None,
            tracestate: None,
        },
        data_version: DATA_VERSION.into(),
        metadata_version: None,
        topic: None,
    }
}

pub async fn seed(manifest: &Manifest) -> Result<()> {
    let topic = manifest
        .topic
        .as_ref()
        .context("no topic to publish the seed to")?;
    Publisher::new(topic.endpoint.clone(), topic.publish_auth())
        .publish(&[seed_event()])
        .await
        .context("publishing the seed catalogue")?;
    Ok(())
}
