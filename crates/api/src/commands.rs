//! The rules for turning a shop request into a `recordUpdated` command, without I/O: request
//! shapes and their validation, idempotency keys, request fingerprints, transaction ids and the
//! event itself. Time and product data are arguments.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use saldo_core::events::{
    DATA_VERSION, EventGridEvent, MAX_LINES, MAX_PRODUCT_NUMBER, MAX_QUANTITY, ProductLine,
    RECORD_UPDATED, RecordUpdated,
};
use saldo_core::views::ProductView;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, invalid};

/// A shopper's order: `POST /api/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// 1 to 100 lines, each product at most once.
    pub lines: Vec<OrderLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// Product id.
    pub id: u64,
    /// How many to buy, 1 to 1000.
    pub quantity: i64,
}

/// The warehouse's new quantity for one product: `PUT /api/products/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSaldoRequest {
    /// The absolute quantity, 0 to 1,000,000.
    pub saldo: i64,
}

/// Largest quantity of one product in one shopper's order. A shop cart line above this is a typo
/// or an attack, not a purchase (the event schema itself allows up to `MAX_QUANTITY`).
pub const MAX_ORDER_QUANTITY: i64 = 1_000;
/// Idempotency keys are client-chosen strings (usually a UUID); bounded so they fit any index.
pub const MAX_KEY_LEN: usize = 200;

/// Transaction ids are UUIDv5 of the idempotency key in this namespace. Never change it: a retried
/// request must map to the transaction its first attempt created, across deployments.
pub const TRANSACTION_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_3c2e_9a4d_4e57_8f10_5a1d_c0de_5a1d);

pub fn validate_order(order: &OrderRequest) -> Result<(), ApiError> {
    if order.lines.is_empty() {
        return Err(invalid("lines", "an order needs at least one line"));
    }
    if order.lines.len() > MAX_LINES {
        return Err(invalid(
            "lines",
            format!("at most {MAX_LINES} lines per order"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, line) in order.lines.iter().enumerate() {
        if !seen.insert(line.id) {
            return Err(invalid(
                format!("lines[{i}].id"),
                format!(
                    "product {} appears twice; give one line per product",
                    line.id
                ),
            ));
        }
        check_product_id(&format!("lines[{i}].id"), line.id)?;
        if !(1..=MAX_ORDER_QUANTITY).contains(&line.quantity) {
            return Err(invalid(
                format!("lines[{i}].quantity"),
                format!("must be between 1 and {MAX_ORDER_QUANTITY}"),
            ));
        }
    }
    Ok(())
}

pub fn validate_saldo(req: &SetSaldoRequest) -> Result<(), ApiError> {
    if !(0..=MAX_QUANTITY).contains(&req.saldo) {
        return Err(invalid(
            "saldo",
            format!("must be between 0 and {MAX_QUANTITY}"),
        ));
    }
    Ok(())
}

pub fn check_product_id(field: &str, id: u64) -> Result<(), ApiError> {
    if id > MAX_PRODUCT_NUMBER {
        return Err(invalid(
            field,
            format!("must be at most {MAX_PRODUCT_NUMBER}"),
        ));
    }
    Ok(())
}

/// Parses a product id from a path segment.
pub fn parse_product_id(raw: &str) -> Result<u64, ApiError> {
    let id = raw.parse::<u64>().map_err(|_| {
        invalid(
            "id",
            format!("{raw:?} is not a product id (a whole number)"),
        )
    })?;
    check_product_id("id", id)?;
    Ok(id)
}

/// Checks a client's `Idempotency-Key`: 1..=200 visible ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(invalid(
            "Idempotency-Key",
            format!("must be 1 to {MAX_KEY_LEN} characters"),
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "Idempotency-Key",
            "must be visible ASCII without spaces",
        ));
    }
    Ok(())
}

/// The transaction (and event) id a key maps to. Deterministic, so a retry finds its first attempt.
pub fn transaction_id(key: &str) -> String {
    Uuid::new_v5(&TRANSACTION_NAMESPACE, key.as_bytes()).to_string()
}

/// What a request asks for, in canonical form: the same purchase gives the same fingerprint
/// whatever the order of its lines or the spacing of its JSON, and an order never shares a
/// fingerprint with a quantity update.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Intent {
    Order { lines: BTreeMap<u64, i64> },
    SetSaldo { id: u64, saldo: i64 },
}

impl Intent {
    pub fn order(order: &OrderRequest) -> Self {
        Intent::Order {
            lines: order.lines.iter().map(|l| (l.id, l.quantity)).collect(),
        }
    }

    /// SHA-256 of the canonical JSON, hex.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("intents always serialize");
        format!("{:x}", Sha256::digest(&canonical))
    }
}

/// The product lines of an order (`change: -quantity`), with `ean` and `name` from the
/// catalogue. Errors name every unknown product at once.
pub fn order_lines(
    order: &OrderRequest,
    catalogue: &[ProductView],
) -> Result<Vec<ProductLine>, ApiError> {
    let by_id: BTreeMap<u64, &ProductView> = catalogue.iter().map(|p| (p.id, p)).collect();
    let unknown: Vec<u64> = order
        .lines
        .iter()
        .map(|l| l.id)
        .filter(|id| !by_id.contains_key(id))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::UnknownProducts(unknown));
    }
    Ok(order
        .lines
        .iter()
        .map(|l| {
            let p = by_id[&l.id];
            ProductLine {
                id: p.id,
                ean: p.ean,
                name: p.name.clone(),
                saldo: None,
                change: Some(-l.quantity),
            }
        })
        .collect())
}

pub fn saldo_line(product: &ProductView, saldo: i64) -> ProductLine {
    ProductLine {
        id: product.id,
        ean: product.ean,
        name: product.name.clone(),
        saldo: Some(saldo),
        change: None,
    }
}

/// The `recordUpdated` event for `transaction`. Checked against the same rules the workers apply,
/// so the API never publishes a command a worker would refuse.
pub fn record_updated(
    transaction: &str,
    subject: String,
    products: Vec<ProductLine>,
    traceparent: Option<String>,
    now: DateTime<Utc>,
) -> Result<EventGridEvent<RecordUpdated>, ApiError> {
    let data = RecordUpdated {
        transaction: Some(transaction.to_string()),
        products,
        traceparent,
        tracestate: None,
    };
    data.validate(transaction)
        .map_err(|e| ApiError::Internal(format!("built an invalid command: {e}")))?;
    Ok(EventGridEvent {
        id: transaction.to_string(),
        event_type: RECORD_UPDATED.to_string(),
        subject,
        event_time: now,
        data,
        data_version: DATA_VERSION.to_string(),
        metadata_version: None,
        topic: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(lines: &[(u64, i64)]) -> OrderRequest {
        OrderRequest {
            lines: lines
                .iter()
                .map(|&(id, quantity)| OrderLine { id, quantity })
                .collect(),
        }
    }

    #[test]
    fn orders_are_validated() {
        assert!(validate_order(&order(&[(1, 1), (2, MAX_ORDER_QUANTITY)])).is_ok());
        for (bad, field) in [
            (order(&[]), "lines"),
            (order(&[(1, 0)]), "lines[0].quantity"),
            (order(&[(1, -3)]), "lines[0].quantity"),
            (order(&[(1, MAX_ORDER_QUANTITY + 1)]), "lines[0].quantity"),
            (order(&[(1, 1), (1, 2)]), "lines[1].id"),
            (order(&[(MAX_PRODUCT_NUMBER + 1, 1)]), "lines[0].id"),
            (
                order(&(0..=MAX_LINES as u64).map(|i| (i, 1)).collect::<Vec<_>>()),
                "lines",
            ),
        ] {
            match validate_order(&bad) {
                Err(ApiError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn fingerprints_ignore_line_order_but_not_content() {
        let a = Intent::order(&order(&[(1, 2), (3, 4)])).fingerprint();
        assert_eq!(a, Intent::order(&order(&[(3, 4), (1, 2)])).fingerprint());
        assert_ne!(a, Intent::order(&order(&[(1, 2), (3, 5)])).fingerprint());
        assert_ne!(
            Intent::SetSaldo { id: 1, saldo: 2 }.fingerprint(),
            Intent::order(&order(&[(1, 2)])).fingerprint()
        );
    }

    #[test]
    fn transaction_ids_are_stable_per_key() {
        assert_eq!(transaction_id("k1"), transaction_id("k1"));
        assert_ne!(transaction_id("k1"), transaction_id("k2"));
        // Pinned to literals (cross-checked with Python's uuid.uuid5): changing the namespace
        // or the derivation would make a retry across a deployment buy twice.
        assert_eq!(transaction_id("k1"), "3ee87895-dd5d-539a-99ef-0aeb9b3fb16e");
        assert_eq!(
            transaction_id("checkout-2026-0001"),
            "0b689200-59fa-5e7c-9ac9-53af5a90637e"
        );
        assert_eq!(
            Uuid::parse_str(&transaction_id("k1"))
                .unwrap()
                .get_version_num(),
            5
        );
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_idempotency_key("3f2c-AB_x.1").is_ok());
        assert!(check_idempotency_key("").is_err());
        assert!(check_idempotency_key("has space").is_err());
        assert!(check_idempotency_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
    }

    #[test]
    fn order_lines_fill_the_catalogue_fields_and_name_unknown_products() {
        let cat = vec![ProductView {
            id: 1,
            ean: 1111,
            name: "Orange".into(),
            saldo: 5,
        }];
        let lines = order_lines(&order(&[(1, 2)]), &cat).unwrap();
        assert_eq!(
            lines[0],
            ProductLine {
                id: 1,
                ean: 1111,
                name: "Orange".into(),
                saldo: None,
                change: Some(-2)
            }
        );
        match order_lines(&order(&[(1, 1), (7, 1), (9, 1)]), &cat) {
            Err(ApiError::UnknownProducts(ids)) => assert_eq!(ids, vec![7, 9]),
            other => panic!("{other:?}"),
        }
        let e = record_updated("t1", "s".into(), lines, None, Utc::now()).unwrap();
        assert_eq!(
            (e.id.as_str(), e.data.transaction.as_deref()),
            ("t1", Some("t1"))
        );
        assert_eq!(e.data_version, DATA_VERSION);
    }
}
