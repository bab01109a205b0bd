//! Canonical hashing: SHA-256 of the RFC 8785 (JCS) canonical form of a JSON document, so that
//! key order, number spellings and string escapes never change the hash, and content always does.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The RFC 8785 canonical serialisation of `value`.
pub fn canonical_json(value: &Value) -> String {
    serde_jcs::to_string(value).expect("a serde_json::Value always serialises")
}

/// Lowercase hex SHA-256 of the canonical form of `value`: the idempotency payload hash.
pub fn canonical_hash(value: &Value) -> String {
    let digest = Sha256::digest(canonical_json(value).as_bytes());
    hex::encode(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash_of(text: &str) -> String {
        canonical_hash(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn spelling_does_not_change_the_hash() {
        let base = hash_of(r#"{"a":1,"b":"é","c":[1e2,0.5]}"#);
        assert_eq!(
            base,
            hash_of(r#"{ "c" : [100, 5E-1], "b":"\u00e9", "a":1.0 }"#)
        );
        assert_eq!(base.len(), 64);
    }

    #[test]
    fn content_changes_the_hash() {
        let base = hash_of(r#"{"a":1,"b":"x"}"#);
        for other in [
            r#"{"a":2,"b":"x"}"#,
            r#"{"a":1,"b":"X"}"#,
            r#"{"a":1}"#,
            r#"{"a":1,"b":"x","c":null}"#,
            r#"{"a":"1","b":"x"}"#,
        ] {
            assert_ne!(base, hash_of(other), "{other}");
        }
    }

    #[test]
    fn rfc8785_example_serialises_canonically() {
        let value: Value = serde_json::from_str(
            r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&value),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            (-1e6f64..1e6)
                .prop_filter("integral floats equal integers", |f| f.fract() != 0.0)
                .prop_map(Value::from),
            "[a-z\u{e9}\u{20ac}\"\\\\ ]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Serialises with object keys in reverse order and numbers re-spelled, to vary the text.
    fn respell(value: &Value) -> String {
        match value {
            Value::Object(map) => {
                let fields: Vec<String> = map
                    .iter()
                    .rev()
                    .map(|(k, v)| format!("{} : {}", serde_json::to_string(k).unwrap(), respell(v)))
                    .collect();
                format!("{{ {} }}", fields.join(" , "))
            }
            Value::Array(items) => {
                format!(
                    "[{}]",
                    items.iter().map(respell).collect::<Vec<_>>().join(",")
                )
            }
            Value::Number(n) if n.is_i64() => format!("{}.0e0", n.as_i64().unwrap()),
            Value::String(s) => {
                s.chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_string()
                        } else {
                            format!("\\u{:04x}", c as u32)
                        }
                    })
                    .fold(String::from("\""), |acc, part| acc + &part)
                    + "\""
            }
            other => other.to_string(),
        }
    }

    proptest! {
        #[test]
        fn any_spelling_of_a_document_has_one_hash(value in json_value()) {
            let respelled = respell(&value);
            let reparsed: Value = serde_json::from_str(&respelled).unwrap();
            prop_assert_eq!(canonical_hash(&value), canonical_hash(&reparsed), "{}", respelled);
        }

        #[test]
        fn any_change_of_content_changes_the_hash(value in json_value(), other in json_value()) {
            prop_assume!(value != other);
            prop_assert_ne!(canonical_hash(&value), canonical_hash(&other));
        }
    }
}
