//! Stock arithmetic: what a transaction's lines do to the warehouse.
//!
//! All lines of a transaction apply together or not at all: [`apply`] either returns the new
//! state of every product the transaction touches, or a rejection with a reason. A rejection is
//! terminal (the same command against the same stock would be rejected again... and against
//! later stock it would not be the same transaction any more), so it is recorded, not retried.
//!
//! Choice for `Set` (absolute `saldo`) of a product the warehouse does not know yet: **create
//! it**, with the line's `ean` and `name`. The design plan's UPDATE call is how products get
//! their stock in the first place; rejecting would leave no way to stock a new product.
//! A `Change` of an unknown product is rejected (`unknown product 42`): nothing to change.
//! `Set` of a known product keeps its `ean` and `name` (a stock count does not rename things).

use std::collections::BTreeMap;

use crate::events::{MAX_QUANTITY, Operation, ProductLine, Quantity};
use crate::views::ProductView;

/// The outcome of a transaction's lines against the current stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockDecision {
    /// Every touched product's new state, in the order of the lines. `created` lists products
    /// that did not exist before.
    Apply {
        products: Vec<ProductView>,
        created: Vec<u64>,
    },
    /// Nothing changes; the reason is for people (it travels in `transactionCompleted`).
    Reject { reason: String },
}

impl StockDecision {
    /// The resulting quantities (empty for a rejection), as carried by `transactionCompleted`.
    pub fn quantities(&self) -> Vec<Quantity> {
        match self {
            StockDecision::Apply { products, .. } => products
                .iter()
                .map(|p| Quantity {
                    id: p.id,
                    saldo: p.saldo,
                })
                .collect(),
            StockDecision::Reject { .. } => Vec::new(),
        }
    }
}

/// Applies `lines` (already validated by [`crate::events::RecordUpdated::validate`]: distinct
/// ids, exactly one of saldo/change, bounded values) to `current` (the touched products that
/// exist; missing ones are unknown).
pub fn apply(current: &BTreeMap<u64, ProductView>, lines: &[ProductLine]) -> StockDecision {
    let mut products = Vec::with_capacity(lines.len());
    let mut created = Vec::new();
    for line in lines {
        let existing = current.get(&line.id);
        let (base, new_saldo) = match (existing, line.operation()) {
            (Some(p), Operation::Set(n)) => (p.clone(), n),
            (None, Operation::Set(n)) => {
                created.push(line.id);
                (
                    ProductView {
                        id: line.id,
                        ean: line.ean,
                        name: line.name.clone(),
                        saldo: 0,
                    },
                    n,
                )
            }
            (Some(p), Operation::Change(d)) => {
                // Both are bounded by MAX_QUANTITY, so this cannot overflow; checked anyway.
                let Some(n) = p.saldo.checked_add(d) else {
                    return StockDecision::Reject {
                        reason: format!("quantity overflow: {} (id {})", p.name, p.id),
                    };
                };
                (p.clone(), n)
            }
            (None, Operation::Change(_)) => {
                return StockDecision::Reject {
                    reason: format!("unknown product {}", line.id),
                };
            }
        };
        if new_saldo < 0 {
            return StockDecision::Reject {
                reason: format!(
                    "out of stock: {} (id {}) has {}, needs {}",
                    base.name,
                    base.id,
                    base.saldo,
                    // new = saldo + change, so what the line needs is saldo - new.
                    base.saldo - new_saldo
                ),
            };
        }
        if new_saldo > MAX_QUANTITY {
            return StockDecision::Reject {
                reason: format!(
                    "too much stock: {} (id {}) would have {new_saldo}, at most {MAX_QUANTITY}",
                    base.name, base.id
                ),
            };
        }
        products.push(ProductView {
            saldo: new_saldo,
            ..base
        });
    }
    debug_assert_eq!(products.len(), lines.len());
    StockDecision::Apply { products, created }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: u64, name: &str, saldo: i64) -> ProductView {
        ProductView {
            id,
            ean: id * 1111,
            name: name.into(),
            saldo,
        }
    }
    fn line(id: u64, saldo: Option<i64>, change: Option<i64>) -> ProductLine {
        ProductLine {
            id,
            ean: id * 1111,
            name: format!("P{id}"),
            saldo,
            change,
        }
    }
    fn stock(ps: &[ProductView]) -> BTreeMap<u64, ProductView> {
        ps.iter().map(|p| (p.id, p.clone())).collect()
    }

    #[test]
    fn purchase_and_restock() {
        let cur = stock(&[product(1, "Orange", 5), product(2, "Apple", 1)]);
        let d = apply(&cur, &[line(1, None, Some(-2)), line(2, Some(7), None)]);
        assert_eq!(
            d,
            StockDecision::Apply {
                products: vec![product(1, "Orange", 3), product(2, "Apple", 7)],
                created: vec![]
            }
        );
        assert_eq!(
            d.quantities(),
            vec![Quantity { id: 1, saldo: 3 }, Quantity { id: 2, saldo: 7 }]
        );
    }

    #[test]
    fn below_zero_rejects_the_whole_transaction() {
        let cur = stock(&[product(1, "Orange", 0), product(2, "Apple", 9)]);
        let d = apply(&cur, &[line(2, None, Some(-1)), line(1, None, Some(-2))]);
        assert_eq!(
            d,
            StockDecision::Reject {
                reason: "out of stock: Orange (id 1) has 0, needs 2".into()
            }
        );
        assert!(d.quantities().is_empty());
        let cur = stock(&[product(1, "Orange", 3)]);
        let StockDecision::Reject { reason } = apply(&cur, &[line(1, None, Some(-5))]) else {
            panic!()
        };
        assert_eq!(reason, "out of stock: Orange (id 1) has 3, needs 5");
    }

    #[test]
    fn the_last_item_can_be_bought() {
        let cur = stock(&[product(1, "Orange", 1)]);
        assert!(matches!(
            apply(&cur, &[line(1, None, Some(-1))]),
            StockDecision::Apply { .. }
        ));
    }

    #[test]
    fn unknown_products() {
        let cur = stock(&[]);
        assert_eq!(
            apply(&cur, &[line(42, None, Some(-1))]),
            StockDecision::Reject {
                reason: "unknown product 42".into()
            }
        );
        // Set creates, with the line's ean and name.
        let d = apply(&cur, &[line(42, Some(3), None)]);
        assert_eq!(
            d,
            StockDecision::Apply {
                products: vec![ProductView {
                    id: 42,
                    ean: 42 * 1111,
                    name: "P42".into(),
                    saldo: 3
                }],
                created: vec![42]
            }
        );
    }

    #[test]
    fn set_keeps_name_and_upper_bound_holds() {
        let cur = stock(&[product(1, "Orange", 5)]);
        let StockDecision::Apply { products, .. } = apply(&cur, &[line(1, Some(0), None)]) else {
            panic!()
        };
        assert_eq!(products[0], product(1, "Orange", 0));
        let cur = stock(&[product(1, "Orange", MAX_QUANTITY)]);
        assert!(matches!(
            apply(&cur, &[line(1, None, Some(1))]),
            StockDecision::Reject { .. }
        ));
    }
}
