//! What the OpenAPI document says about each input, built from the very constants the validation
//! in [`crate::commands`] and `saldo_core::events` checks, so the document and the server cannot
//! drift apart (utoipa's attributes take only literals, hence these builders). The unit tests
//! below read the bounds back out of the generated document and check that the validation
//! accepts each boundary and refuses one past it; `tests/contract/run.sh` runs schemathesis
//! against the whole stack.
//!
//! The split of refusals the document promises: **400** when a request breaks this document
//! (types, bounds, patterns, required headers), **401/403** for the caller, **404** for a resource
//! that does not exist, **422** when a request conforms but cannot be carried out (unknown
//! products, a product on two lines, a key reused for a different request), **413** for a body
//! over [`crate::routes::MAX_BODY_BYTES`], **503** (with `Retry-After`) when a dependency is away.

use saldo_core::events::{MAX_ID_LEN, MAX_LINES, MAX_PRODUCT_NUMBER, MAX_QUANTITY};
use utoipa::IntoParams;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr, Required, Schema};

use crate::commands::{
    DEFAULT_RECENT, KEY_PATTERN, MAX_KEY_LEN, MAX_ORDER_QUANTITY, MAX_RECENT,
    TRANSACTION_ID_PATTERN,
};
use crate::principal;

fn integer(min: i64, max: u64, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Integer))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(min))
        .maximum(Some(max))
        .description(Some(description))
}

/// A product id (also an EAN's range): 0 to 2^53, the largest integer JavaScript keeps exactly.
pub fn product_id() -> Schema {
    integer(0, MAX_PRODUCT_NUMBER, "Product id.").build().into()
}

/// One line's quantity in a shopper's order.
pub fn order_quantity() -> Schema {
    integer(1, MAX_ORDER_QUANTITY as u64, "How many to buy.")
        .build()
        .into()
}

/// The warehouse's absolute quantity for one product.
pub fn saldo() -> Schema {
    integer(0, MAX_QUANTITY as u64, "The absolute quantity.")
        .build()
        .into()
}

/// An order's lines: at least one, at most `MAX_LINES`.
pub fn order_lines() -> Schema {
    ArrayBuilder::new()
        .items(RefOr::Ref(Ref::from_schema_name("OrderLine")))
        .min_items(Some(1))
        .max_items(Some(MAX_LINES))
        .description(Some(
            "One line per product (a product on two lines is refused with 422).",
        ))
        .build()
        .into()
}

fn string(min: usize, max: usize, pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(pattern))
}

fn param(name: &str, at: ParameterIn, required: bool, description: &str) -> ParameterBuilder {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(at)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .description(Some(description))
}

/// `{id}` of `/api/products/{id}`.
pub struct ProductIdPath;
impl IntoParams for ProductIdPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            param("id", ParameterIn::Path, true, "Product id")
                .schema(Some(product_id()))
                .build(),
        ]
    }
}

/// `{id}` and `?nodes=` of `/api/transactions/{id}`.
pub struct TransactionIdPath;
impl IntoParams for TransactionIdPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let nodes = ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Boolean))
            .default(Some(true.into()))
            .description(Some("Include each node's view."));
        vec![
            param(
                "id",
                ParameterIn::Path,
                true,
                "Transaction id (from the 202 answer); no control characters",
            )
            .schema(Some(string(1, MAX_ID_LEN, TRANSACTION_ID_PATTERN).build()))
            .build(),
            param(
                "nodes",
                ParameterIn::Query,
                false,
                "`true` (the default): every node is asked for its view. `false`: the status \
                 comes from the warehouse's applied-marker through one node (one read instead \
                 of one per node, as polls want it), and `nodes` is empty",
            )
            .schema(Some(nodes.build()))
            .build(),
        ]
    }
}

/// `?limit=` of `GET /api/transactions`.
pub struct RecentQuery;
impl IntoParams for RecentQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = integer(1, MAX_RECENT as u64, "How many transactions.")
            .default(Some(DEFAULT_RECENT.into()));
        vec![
            param(
                "limit",
                ParameterIn::Query,
                false,
                "How many transactions, newest first",
            )
            .schema(Some(schema.build()))
            .build(),
        ]
    }
}

fn idempotency_key(required: bool, description: &str) -> Parameter {
    param(
        "Idempotency-Key",
        ParameterIn::Header,
        required,
        description,
    )
    .schema(Some(string(1, MAX_KEY_LEN, KEY_PATTERN).description(Some(
        "Visible ASCII without spaces, usually a UUID",
    ))))
    .build()
}

fn client_principal(required: bool, description: &str) -> Parameter {
    param(
        principal::HEADER,
        ParameterIn::Header,
        required,
        description,
    )
    .schema(Some(
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .description(Some(
                "Base64 of the principal's JSON (`userId`, `userRoles`, ...); one that \
                     cannot be read is refused with 401",
            )),
    ))
    .build()
}

/// The headers of `POST /api/orders`.
pub struct OrderHeaders;
impl IntoParams for OrderHeaders {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            idempotency_key(
                true,
                "Required; the same key always maps to the same transaction",
            ),
            client_principal(
                false,
                "Optional: set by Static Web Apps for a signed-in shopper",
            ),
        ]
    }
}

/// The headers of `PUT /api/products/{id}`.
pub struct StockHeaders;
impl IntoParams for StockHeaders {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            client_principal(
                true,
                "Set by Static Web Apps; the principal must hold role `warehouse`",
            ),
            idempotency_key(
                false,
                "Optional; a retry with the same key and body gets the same transaction",
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    //! The document's bounds, read back from the generated JSON, against the validation itself:
    //! each boundary is accepted and one past it refused. A constant changed on one side only
    //! fails here.

    use serde_json::{Value, json};

    use crate::commands::{self, OrderLine, OrderRequest, SetSaldoRequest};

    fn doc() -> Value {
        serde_json::to_value(crate::openapi()).unwrap()
    }

    fn param(doc: &Value, path: &str, method: &str, name: &str) -> Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} has no parameters"))
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
            .clone()
    }

    fn int(v: &Value) -> i64 {
        v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
    }

    fn order(lines: impl IntoIterator<Item = (u64, i64)>) -> OrderRequest {
        OrderRequest {
            lines: lines
                .into_iter()
                .map(|(id, quantity)| OrderLine { id, quantity })
                .collect(),
        }
    }

    #[test]
    fn order_bounds_are_the_validations() {
        let d = doc();
        let s = &d["components"]["schemas"];
        let lines = &s["OrderRequest"]["properties"]["lines"];
        let (min, max) = (int(&lines["minItems"]), int(&lines["maxItems"]));
        assert!(commands::validate_order(&order((0..min as u64).map(|i| (i, 1)))).is_ok());
        assert!(commands::validate_order(&order((0..max as u64).map(|i| (i, 1)))).is_ok());
        assert!(commands::validate_order(&order((0..min as u64 - 1).map(|i| (i, 1)))).is_err());
        assert!(commands::validate_order(&order((0..=max as u64).map(|i| (i, 1)))).is_err());

        let q = &s["OrderLine"]["properties"]["quantity"];
        for (quantity, ok) in [
            (int(&q["minimum"]), true),
            (int(&q["maximum"]), true),
            (int(&q["minimum"]) - 1, false),
            (int(&q["maximum"]) + 1, false),
        ] {
            let r = commands::validate_order(&order([(1, quantity)]));
            assert_eq!(r.is_ok(), ok, "quantity {quantity}: {r:?}");
        }
        let id = &s["OrderLine"]["properties"]["id"];
        let max_id = id["maximum"].as_u64().unwrap();
        assert_eq!(int(&id["minimum"]), 0);
        assert!(commands::validate_order(&order([(max_id, 1)])).is_ok());
        assert!(commands::validate_order(&order([(max_id + 1, 1)])).is_err());
        assert_eq!(
            s["OrderLine"]["required"],
            json!(["id", "quantity"]),
            "both fields are required"
        );
    }

    /// The SPA's limits are checked against `frontend/src/api-limits.json` (`cart.test.ts`); this
    /// checks that file against the document, so a bound changed here fails one of the two.
    #[test]
    fn the_spas_limits_file_states_the_documents_bounds() {
        let d = doc();
        let s = &d["components"]["schemas"];
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../frontend/src/api-limits.json"
        );
        let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let expected = json!({
            "maxLines": s["OrderRequest"]["properties"]["lines"]["maxItems"],
            "maxOrderQuantity": s["OrderLine"]["properties"]["quantity"]["maximum"],
            "maxSaldo": s["SetSaldoRequest"]["properties"]["saldo"]["maximum"],
        });
        assert_eq!(
            file, expected,
            "frontend/src/api-limits.json must state the OpenAPI document's bounds"
        );
    }

    #[test]
    fn stock_and_product_id_bounds_are_the_validations() {
        let d = doc();
        let saldo = &d["components"]["schemas"]["SetSaldoRequest"]["properties"]["saldo"];
        for (v, ok) in [
            (int(&saldo["minimum"]), true),
            (int(&saldo["maximum"]), true),
            (int(&saldo["minimum"]) - 1, false),
            (int(&saldo["maximum"]) + 1, false),
        ] {
            let r = commands::validate_saldo(&SetSaldoRequest { saldo: v });
            assert_eq!(r.is_ok(), ok, "saldo {v}: {r:?}");
        }
        for method in ["get", "put"] {
            let id = param(&d, "/api/products/{id}", method, "id");
            assert_eq!(id["required"], true);
            let max = id["schema"]["maximum"].as_u64().unwrap();
            assert!(commands::parse_product_id(&max.to_string()).is_ok());
            assert!(commands::parse_product_id(&(max + 1).to_string()).is_err());
        }
    }

    #[test]
    fn header_and_query_bounds_are_the_validations() {
        let d = doc();
        let key = param(&d, "/api/orders", "post", "Idempotency-Key");
        assert_eq!(key["required"], true, "orders need a key");
        assert_eq!(
            param(&d, "/api/products/{id}", "put", "Idempotency-Key")["required"],
            false
        );
        let max = int(&key["schema"]["maxLength"]) as usize;
        assert_eq!(int(&key["schema"]["minLength"]), 1);
        assert_eq!(key["schema"]["pattern"], commands::KEY_PATTERN);
        assert!(commands::check_idempotency_key(&"k".repeat(max)).is_ok());
        assert!(commands::check_idempotency_key(&"k".repeat(max + 1)).is_err());
        assert!(commands::check_idempotency_key("").is_err());
        // The pattern is visible ASCII: every byte in it passes, space and DEL do not.
        for b in b'!'..=b'~' {
            assert!(commands::check_idempotency_key(&(b as char).to_string()).is_ok());
        }
        for bad in [" ", "\x7f", "é"] {
            assert!(commands::check_idempotency_key(bad).is_err(), "{bad:?}");
        }

        let limit = param(&d, "/api/transactions", "get", "limit");
        assert_eq!(
            (limit["in"].as_str(), &limit["required"]),
            (Some("query"), &json!(false))
        );
        let (min, max) = (
            int(&limit["schema"]["minimum"]),
            int(&limit["schema"]["maximum"]),
        );
        assert_eq!(
            commands::parse_recent_limit(None).unwrap() as i64,
            int(&limit["schema"]["default"])
        );
        for (v, ok) in [(min, true), (max, true), (min - 1, false), (max + 1, false)] {
            let r = commands::parse_recent_limit(Some(&v.to_string()));
            assert_eq!(r.is_ok(), ok, "limit {v}: {r:?}");
        }

        let id = param(&d, "/api/transactions/{id}", "get", "id");
        let max = int(&id["schema"]["maxLength"]) as usize;
        assert_eq!(int(&id["schema"]["minLength"]), 1);
        assert_eq!(id["schema"]["pattern"], commands::TRANSACTION_ID_PATTERN);
        assert!(commands::check_transaction_id(&"t".repeat(max)).is_ok());
        assert!(commands::check_transaction_id(&"t".repeat(max + 1)).is_err());
        assert!(commands::check_transaction_id("").is_err());
    }

    #[test]
    fn every_route_declares_its_errors_in_the_error_shape() {
        let d = doc();
        let want: &[(&str, &str, &[u16])] = &[
            ("/api/products", "get", &[200, 503]),
            ("/api/products/{id}", "get", &[200, 400, 404, 503]),
            (
                "/api/products/{id}",
                "put",
                &[202, 400, 401, 403, 404, 413, 422, 502, 503],
            ),
            ("/api/orders", "post", &[202, 400, 401, 413, 422, 502, 503]),
            ("/api/transactions", "get", &[200, 400, 503]),
            ("/api/transactions/{id}", "get", &[200, 400, 404, 503]),
            ("/api/nodes", "get", &[200]),
            ("/api/openapi.json", "get", &[200]),
        ];
        for (path, method, statuses) in want {
            let responses = d["paths"][path][method]["responses"].as_object().unwrap();
            let got: Vec<u16> = responses.keys().map(|k| k.parse().unwrap()).collect();
            assert_eq!(&got, statuses, "{method} {path}");
            for (status, r) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
                if status == "503" {
                    assert!(r["headers"]["Retry-After"].is_object(), "{method} {path}");
                }
            }
        }
    }
}
