//! Property tests of the event parser, the one door every delivered event comes through: for any
//! JSON at all, and for valid events of each type with one part broken, `parse_event` answers
//! `Ok` or an `InvalidEvent` with a reason, never panics, and whatever it accepts satisfies every
//! rule a ledger relies on (so `ProductLine::operation` and the stock arithmetic never meet a
//! line they cannot read). Cases: `PROPTEST_CASES` (default 256 per property).

use proptest::prelude::*;
use saldo_core::events::{
    DATA_VERSION, MAX_ID_LEN, MAX_LINES, MAX_NAME_LEN, MAX_PRODUCT_NUMBER, MAX_QUANTITY,
    NODE_HEARTBEAT, Operation, RECORD_UPDATED, SaldoEvent, TRANSACTION_COMPLETED, parse_event,
};
use serde_json::{Value, json};

/// Any JSON value, small enough to keep cases fast, with the numbers and strings that sit on
/// the parser's bounds more often than chance would pick them.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(MAX_QUANTITY),
            Just(MAX_QUANTITY + 1)
        ]
        .prop_map(Value::from),
        Just(json!(MAX_PRODUCT_NUMBER + 1)),
        ".{0,12}".prop_map(Value::from),
        Just(Value::from("1.0")),
        Just(Value::from("x".repeat(MAX_ID_LEN + 1))),
        Just(Value::from(RECORD_UPDATED)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-zA-Z]{1,8}",
                    Just("id".to_string()),
                    Just("data".to_string()),
                    Just("products".to_string()),
                    Just("saldo".to_string()),
                    Just("change".to_string()),
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9-]{1,40}", "\\PC{1,32}"].prop_filter("within the id bound", |s| {
        !s.is_empty() && s.len() <= MAX_ID_LEN
    })
}

fn line() -> impl Strategy<Value = Value> {
    (
        0..=MAX_PRODUCT_NUMBER,
        0..=MAX_PRODUCT_NUMBER,
        "[a-zA-Z][a-zA-Z ]{0,20}",
        prop_oneof![
            (0..=MAX_QUANTITY).prop_map(|s| ("saldo", s)),
            (1..=MAX_QUANTITY, any::<bool>())
                .prop_map(|(c, neg)| ("change", if neg { -c } else { c })),
        ],
    )
        .prop_map(|(id, ean, name, (op, v))| json!({"id": id, "ean": ean, "name": name, op: v}))
}

/// A valid event of each of the three types.
pub fn valid_event() -> impl Strategy<Value = Value> {
    let command = (id(), prop::collection::vec(line(), 1..6)).prop_map(|(id, lines)| {
        // One line per product, as the rules demand.
        let mut seen = std::collections::BTreeSet::new();
        let lines: Vec<Value> = lines
            .into_iter()
            .filter(|l| seen.insert(l["id"].as_u64().unwrap()))
            .collect();
        json!({"id": id, "eventType": RECORD_UPDATED, "subject": "s",
               "eventTime": "2026-01-01T00:00:00Z", "dataVersion": DATA_VERSION,
               "data": {"transaction": id, "products": lines}})
    });
    let completed = (id(), id(), id(), any::<bool>()).prop_map(|(eid, tx, node, ok)| {
        json!({"id": eid, "eventType": TRANSACTION_COMPLETED, "subject": "s",
               "eventTime": "2026-01-01T00:00:00Z", "dataVersion": DATA_VERSION,
               "metadataVersion": "1",
               "data": {"transaction": tx, "status": if ok { "completed" } else { "rejected" },
                        "reason": if ok { Value::Null } else { json!("out of stock") },
                        "timestamp": "2026-01-01T00:00:01Z", "node": node, "region": "r",
                        "products": [{"id": 1, "saldo": 3}]}})
    });
    let heartbeat = (id(), id()).prop_map(|(eid, node)| {
        json!({"id": eid, "eventType": NODE_HEARTBEAT, "subject": "s",
               "eventTime": "2026-01-01T00:00:00Z", "dataVersion": DATA_VERSION,
               "data": {"node": node, "region": "r", "url": "http://127.0.0.1:1", "ready": true,
                        "startedAt": "2026-01-01T00:00:00Z", "timestamp": "2026-01-01T00:00:00Z",
                        "counters": {"received": 1}}})
    });
    prop_oneof![command, completed, heartbeat]
}

/// Every JSON path (object keys and array indices) inside a value.
fn paths(v: &Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => m.iter().for_each(|(k, c)| {
            let mut p = at.clone();
            p.push(k.clone());
            paths(c, p, out)
        }),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| {
            let mut p = at.clone();
            p.push(i.to_string());
            paths(c, p, out)
        }),
        _ => {}
    }
}

fn pointer(path: &[String]) -> String {
    path.iter().map(|p| format!("/{p}")).collect()
}

/// What every accepted event must satisfy, checked independently of the parser's own code.
fn check_accepted(e: &SaldoEvent) {
    let ok_id =
        |s: &str| !s.is_empty() && s.len() <= MAX_ID_LEN && !s.chars().any(char::is_control);
    match e {
        SaldoEvent::RecordUpdated(e) => {
            assert!(ok_id(&e.id) && e.data_version == DATA_VERSION);
            let lines = &e.data.products;
            assert!(!lines.is_empty() && lines.len() <= MAX_LINES);
            let mut seen = std::collections::BTreeSet::new();
            for l in lines {
                assert!(seen.insert(l.id), "a product twice");
                assert!(l.id <= MAX_PRODUCT_NUMBER && l.ean <= MAX_PRODUCT_NUMBER);
                assert!(!l.name.trim().is_empty() && l.name.len() <= MAX_NAME_LEN);
                match l.operation() {
                    Operation::Set(s) => assert!((0..=MAX_QUANTITY).contains(&s)),
                    Operation::Change(c) => assert!(c != 0 && c.abs() <= MAX_QUANTITY),
                }
            }
        }
        SaldoEvent::TransactionCompleted(e) => {
            assert!(ok_id(&e.id) && ok_id(&e.data.transaction) && ok_id(&e.data.node));
        }
        SaldoEvent::Heartbeat(e) => assert!(ok_id(&e.id) && ok_id(&e.data.node)),
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn any_json_is_parsed_or_refused_with_a_reason(v in any_json()) {
        match parse_event(&v) {
            Ok(e) => check_accepted(&e),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn valid_events_are_accepted_and_round_trip(v in valid_event()) {
        let e = parse_event(&v).unwrap_or_else(|e| panic!("{v}: {e}"));
        check_accepted(&e);
        let again = match &e {
            SaldoEvent::RecordUpdated(e) => serde_json::to_value(e),
            SaldoEvent::TransactionCompleted(e) => serde_json::to_value(e),
            SaldoEvent::Heartbeat(e) => serde_json::to_value(e),
        }
        .unwrap();
        prop_assert_eq!(parse_event(&again).unwrap(), e);
    }

    /// A valid event with one part replaced by any JSON, or removed: accepted only if it still
    /// satisfies every rule, else refused with a reason.
    #[test]
    fn a_valid_event_with_one_part_broken(
        v in valid_event(),
        pick in any::<prop::sample::Index>(),
        with in any_json(),
        remove in any::<bool>(),
    ) {
        let mut all = vec![];
        paths(&v, vec![], &mut all);
        let path = pick.get(&all[1..]).clone();
        let mut broken = v.clone();
        let (parent, last) = path.split_at(path.len() - 1);
        match broken.pointer_mut(&pointer(parent)).unwrap() {
            Value::Object(m) if remove => {
                m.remove(&last[0]);
            }
            Value::Array(a) if remove => {
                a.remove(last[0].parse::<usize>().unwrap());
            }
            _ => *broken.pointer_mut(&pointer(&path)).unwrap() = with,
        }
        match parse_event(&broken) {
            Ok(e) => check_accepted(&e),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
