//! Canonical hashing: SHA-256 of the RFC 8785 (JCS) canonical form of a JSON document, so that
//! key order, number spellings and string escapes never change the hash, and content always does.
//!
//! The canonical form is written in one pass over the parsed document: object members sorted by
//! the UTF-16 code units of their names, strings escaped by serde_json (which escapes exactly
//! what RFC 8785 asks: `"`, `\\` and the control characters, with lowercase hex), numbers in
//! ECMAScript's shortest round-trip spelling (`ryu-js`). It is the output of `serde_jcs`, which
//! the tests hold it to, at a fraction of the cost: `serde_jcs` buffers every member and re-parses
//! every name, and the gateway hashes every event it receives.
//!
//! RFC 8785 hashes every number as an IEEE 754 double, which holds integers exactly only up to
//! ±2^53: beyond, two different integers (9007199254740993 and 9007199254740992) would share a
//! hash, so a changed payload would replay as the same one. A document holding such an integer
//! is refused ([`InexactNumber`]); I-JSON (RFC 7493) asks for such numbers as strings.

use std::cmp::Ordering;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// An integer no IEEE 754 double holds exactly, so RFC 8785 cannot hash it apart from its
/// neighbours (not retriable: the document must change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the integer {number} is beyond what a double holds exactly (±2^53): send it as a string")]
pub struct InexactNumber {
    /// JSON pointer (RFC 6901) to the number.
    pub pointer: String,
    /// The number as sent.
    pub number: String,
}

impl InexactNumber {
    /// Never retriable: the same document is refused again.
    pub fn is_retriable(&self) -> bool {
        false
    }
}

/// The RFC 8785 canonical serialisation of `value`.
pub fn canonical_json(value: &Value) -> Result<String, InexactNumber> {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out)?;
    Ok(String::from_utf8(out).expect("the canonical form of a string-keyed document is UTF-8"))
}

/// Lowercase hex SHA-256 of the canonical form of `value`: the idempotency payload hash.
pub fn canonical_hash(value: &Value) -> Result<String, InexactNumber> {
    let mut out = Vec::with_capacity(512);
    write_canonical(value, &mut out)?;
    Ok(hex::encode(Sha256::digest(&out)))
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), InexactNumber> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => {
            // RFC 8785 numbers are IEEE 754 doubles; a serde_json number (no arbitrary
            // precision) always has one, and it is always finite. Parsed integers keep their
            // exact value, which the double must hold.
            let double = number.as_f64().expect("a serde_json number is a double");
            let exact = match (number.as_i64(), number.as_u64()) {
                // `as` saturates: 2^63 (i64::MAX rounded up) would come back as i64::MAX.
                (Some(integer), _) => double < 2f64.powi(63) && double as i64 == integer,
                (None, Some(integer)) => double < 2f64.powi(64) && double as u64 == integer,
                (None, None) => true,
            };
            if !exact {
                return Err(InexactNumber {
                    pointer: String::new(),
                    number: number.to_string(),
                });
            }
            out.extend_from_slice(ryu_js::Buffer::new().format_finite(double).as_bytes());
        }
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(item, out).map_err(|err| err.under(&index.to_string()))?;
            }
            out.push(b']');
        }
        Value::Object(members) => write_object(members, out)?,
    }
    Ok(())
}

impl InexactNumber {
    /// The same number, its pointer prefixed by the member or index `segment` it sits under.
    fn under(self, segment: &str) -> Self {
        let escaped = segment.replace('~', "~0").replace('/', "~1");
        Self {
            pointer: format!("/{escaped}{}", self.pointer),
            ..self
        }
    }
}

fn write_object(members: &Map<String, Value>, out: &mut Vec<u8>) -> Result<(), InexactNumber> {
    let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
    // serde_json's map iterates in UTF-8 byte order, which is UTF-16 order unless names mix
    // characters above U+FFFF with ones from U+E000: sort only when that happened.
    if !sorted.is_sorted_by(|a, b| utf16_order(a.0, b.0) != Ordering::Greater) {
        sorted.sort_by(|a, b| utf16_order(a.0, b.0));
    }
    out.push(b'{');
    for (index, (name, member)) in sorted.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_string(name, out);
        out.push(b':');
        write_canonical(member, out).map_err(|err| err.under(name))?;
    }
    out.push(b'}');
    Ok(())
}

fn utf16_order(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write_string(text: &str, out: &mut Vec<u8>) {
    text.serialize(&mut serde_json::Serializer::new(out))
        .expect("writing a string to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash_of(text: &str) -> String {
        canonical_hash(&serde_json::from_str(text).unwrap()).unwrap()
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
            canonical_json(&value).unwrap(),
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

    /// Documents with any names and strings (control characters, characters above U+FFFF and
    /// from U+E000 included) and any finite number.
    fn wide_json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[\\u{0}-\\u{1f}\"\\\\\u{7f}\u{e000}-\u{ffff}\u{10000}-\u{10ffff}a]{0,4}"
                .prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 5, |inner| {
            let name = prop_oneof![
                any::<String>(),
                "[a\u{e000}-\u{ffff}\u{10000}-\u{10ffff}]{0,3}"
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(name, inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Whether every integer of `value` is one an IEEE 754 double holds exactly.
    fn integers_are_exact(value: &Value) -> bool {
        match value {
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => i128::from(i) == n.as_f64().unwrap() as i128,
                (None, Some(u)) => i128::from(u) == n.as_f64().unwrap() as i128,
                (None, None) => true,
            },
            Value::Array(items) => items.iter().all(integers_are_exact),
            Value::Object(members) => members.values().all(integers_are_exact),
            _ => true,
        }
    }

    #[test]
    fn integers_a_double_cannot_hold_are_refused_where_they_are() {
        let refused =
            |text: &str| canonical_hash(&serde_json::from_str(text).unwrap()).expect_err(text);
        // 2^53 + 1 would hash as 2^53: a changed payload would replay as the old one.
        let err = refused(r#"{"payload":{"ids":[1,{"a/b":9007199254740993}]}}"#);
        assert_eq!(err.pointer, "/payload/ids/1/a~1b");
        assert_eq!(err.number, "9007199254740993");
        refused(&i64::MAX.to_string());
        refused(&u64::MAX.to_string());
        refused("-9007199254740993");
        // Integers a double holds exactly, however large, and every float are hashed.
        for exact in [
            "9007199254740992",
            "1152921504606846976",
            &i64::MIN.to_string(),
            "-9007199254740992",
            "9007199254740993.0",
            "1e300",
        ] {
            assert!(hash_of(exact).len() == 64, "{exact}");
        }
        assert_ne!(hash_of("9007199254740992"), hash_of("9007199254740994"));
    }

    #[test]
    fn names_sort_by_utf16_code_units() {
        // UTF-8 puts U+E000 before U+10000; UTF-16 (a surrogate pair from 0xD800) after.
        let value = serde_json::json!({"\u{e000}": 1, "\u{10000}": 2, "a": [0.1, 1e21, -0.0]});
        assert_eq!(
            canonical_json(&value).unwrap(),
            "{\"a\":[0.1,1e+21,0],\"\u{10000}\":2,\"\u{e000}\":1}"
        );
        assert_eq!(
            canonical_json(&value).unwrap(),
            serde_jcs::to_string(&value).unwrap()
        );
    }

    proptest! {
        #[test]
        fn the_canonical_form_is_serde_jcs_output(value in wide_json_value()) {
            match canonical_json(&value) {
                Ok(canonical) => {
                    prop_assert!(integers_are_exact(&value));
                    prop_assert_eq!(canonical, serde_jcs::to_string(&value).unwrap());
                }
                Err(_) => prop_assert!(!integers_are_exact(&value), "refused {}", value),
            }
        }

        #[test]
        fn any_spelling_of_a_document_has_one_hash(value in json_value()) {
            let respelled = respell(&value);
            let reparsed: Value = serde_json::from_str(&respelled).unwrap();
            prop_assert_eq!(canonical_hash(&value).unwrap(), canonical_hash(&reparsed).unwrap(), "{}", respelled);
        }

        #[test]
        fn any_change_of_content_changes_the_hash(value in json_value(), other in json_value()) {
            prop_assume!(value != other);
            prop_assert_ne!(canonical_hash(&value).unwrap(), canonical_hash(&other).unwrap());
        }
    }
}
