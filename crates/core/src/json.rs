//! JSON objects only, for the types that arrive from outside.
//!
//! serde's derived `Deserialize` lets a struct be read from a JSON array of its fields in order,
//! so serde_json reads `[1]` as `{"saldo": 1}` and `[[1, 2]]` as `{"lines": [{"id": 1,
//! "quantity": 2}]}` (serde-rs/serde#1587). That suits positional binary formats; here it only
//! means a body no schema of ours allows is carried out as if it were another one. A type listed
//! in [`objects_only!`] reads from a JSON object and refuses anything else with serde's usual
//! "invalid type" error, wherever it sits: top level or nested in a list.

use serde::Deserializer;
use serde::de::Visitor;

/// A deserializer that asks for a map wherever the derived code asks for a struct. Only the
/// struct request is changed; everything else goes to the wrapped deserializer unchanged.
pub struct MapOnly<D>(pub D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Gives each listed type `Serialize` and `Deserialize` impls that forward to the inherent
/// functions `#[derive(Serialize, Deserialize)] #[serde(remote = "Self")]` generates, reading
/// through [`MapOnly`]. Declare the type with that attribute, then list it here.
#[macro_export]
macro_rules! objects_only {
    ($($t:ty),+ $(,)?) => {$(
        impl<'de> ::serde::Deserialize<'de> for $t {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <$t>::deserialize($crate::json::MapOnly(d))
            }
        }
        impl ::serde::Serialize for $t {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$t>::serialize(self, s)
            }
        }
    )+};
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(remote = "Self", deny_unknown_fields)]
    struct Line {
        id: u64,
        quantity: i64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(remote = "Self")]
    struct Order {
        lines: Vec<Line>,
    }

    crate::objects_only!(Line, Order);

    #[test]
    fn objects_are_read_and_arrays_are_refused_at_every_depth() {
        let order = Order {
            lines: vec![Line { id: 1, quantity: 2 }],
        };
        let text = r#"{"lines":[{"id":1,"quantity":2}]}"#;
        assert_eq!(serde_json::to_string(&order).unwrap(), text);
        assert_eq!(serde_json::from_str::<Order>(text).unwrap(), order);
        assert_eq!(
            serde_json::from_value::<Order>(json!({"lines": [{"id": 1, "quantity": 2}]})).unwrap(),
            order
        );
        for bad in [
            json!([[{"id": 1, "quantity": 2}]]),
            json!({"lines": [[1, 2]]}),
            json!([[[1, 2]]]),
            json!({"lines": [{"id": 1, "quantity": 2, "extra": 0}]}),
        ] {
            let text = bad.to_string();
            let e = serde_json::from_str::<Order>(&text)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("invalid type") || e.contains("unknown field"),
                "{text}: {e}"
            );
            assert!(serde_json::from_value::<Order>(bad).is_err(), "{text}");
        }
    }
}
