//! The event envelope clients send, and its validation — the same code at the gateway and in
//! the dataflow. Validation lists every violation with its JSON pointer (RFC 6901).
//!
//! | field | rule |
//! | --- | --- |
//! | `eventId` | a UUID string |
//! | `tenantId` | 1–64 characters of `A-Z a-z 0-9 . _ -` |
//! | `source`, `type` | 1–128 characters of `A-Z a-z 0-9 . _ - : /` |
//! | `streamKey` | 1–256 printable ASCII characters, no `|` |
//! | `timestampUtc` | RFC 3339 with an offset, not more than the allowed skew in the future |
//! | `schemaVersion` | an integer from 1 to 2³¹−1 |
//! | `payload` | a JSON object, nested at most `max_depth` levels, with no NUL characters |
//!
//! Unknown top-level fields are violations too.

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// One domain event as a client sends it, after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope {
    /// Client-chosen unique id of the event.
    pub event_id: Uuid,
    /// Tenant the event belongs to.
    pub tenant_id: String,
    /// The emitting service.
    pub source: String,
    /// Event type, e.g. `order.created`.
    pub event_type: String,
    /// When the event happened, with the offset the client gave.
    pub timestamp_utc: DateTime<FixedOffset>,
    /// Version of the payload's schema, 1 or more.
    pub schema_version: i32,
    /// The entity stream the event belongs to (its ordering and partitioning key).
    pub stream_key: String,
    /// The event's payload.
    pub payload: Map<String, Value>,
}

impl EventEnvelope {
    /// The Kafka record key: `tenantId|streamKey`, so one stream stays in one partition.
    pub fn record_key(&self) -> String {
        format!("{}|{}", self.tenant_id, self.stream_key)
    }
}

/// Bounds of an acceptable envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeLimits {
    /// Deepest nesting of objects and arrays inside `payload` (the payload object is level 1).
    pub max_depth: usize,
    /// How far in the future `timestampUtc` may lie, for clients with skewed clocks.
    pub max_future_skew: TimeDelta,
}

impl Default for EnvelopeLimits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_future_skew: TimeDelta::minutes(5),
        }
    }
}

/// One reason an envelope is invalid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Violation {
    /// JSON pointer (RFC 6901) to the offending value; `""` is the whole document.
    pub pointer: String,
    /// What is wrong with it.
    pub detail: String,
}

impl Violation {
    fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// Why a body is not an acceptable envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is not JSON at all.
    #[error("body is not valid JSON: {message} (line {line}, column {column})")]
    MalformedJson {
        /// What the JSON parser reported.
        message: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// The body is JSON but breaks the envelope contract.
    #[error("{}", describe(.violations))]
    Invalid {
        /// Every violation found, in document order.
        violations: Vec<Violation>,
    },
}

impl From<crate::canonical::InexactNumber> for EnvelopeError {
    fn from(err: crate::canonical::InexactNumber) -> Self {
        Self::Invalid {
            violations: vec![Violation::new(err.pointer.clone(), err.to_string())],
        }
    }
}

fn describe(violations: &[Violation]) -> String {
    let mut text = format!(
        "event has {} violation{}:",
        violations.len(),
        if violations.len() == 1 { "" } else { "s" }
    );
    for v in violations {
        let at = if v.pointer.is_empty() {
            "(document)"
        } else {
            &v.pointer
        };
        text.push_str(&format!(" {at} {};", v.detail));
    }
    text.pop();
    text
}

impl EnvelopeError {
    /// Envelope errors are the sender's fault: retrying the same bytes never helps.
    pub fn is_retriable(&self) -> bool {
        false
    }
}

/// Parses bytes as JSON; syntax errors carry their position.
pub fn parse_json(bytes: &[u8]) -> Result<Value, EnvelopeError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let message = e.to_string();
        let message = match message.rfind(" at line ") {
            Some(at) => message[..at].to_owned(),
            None => message,
        };
        EnvelopeError::MalformedJson {
            message,
            line: e.line(),
            column: e.column(),
        }
    })
}

/// Parses and validates an envelope from the exact bytes a client sent. `now` is the reference
/// for the future-skew rule (the receive time, also when the dataflow re-validates).
pub fn parse_envelope(
    bytes: &[u8],
    limits: &EnvelopeLimits,
    now: DateTime<Utc>,
) -> Result<EventEnvelope, EnvelopeError> {
    let value = parse_json(bytes)?;
    envelope_from_value(value, limits, now)
}

/// Validates a parsed document as an envelope and takes it apart.
pub fn envelope_from_value(
    value: Value,
    limits: &EnvelopeLimits,
    now: DateTime<Utc>,
) -> Result<EventEnvelope, EnvelopeError> {
    let Value::Object(mut fields) = value else {
        return Err(EnvelopeError::Invalid {
            violations: vec![Violation::new(
                "",
                "must be a JSON object (the event envelope)",
            )],
        });
    };
    let mut violations = Vec::new();
    let mut take = |name: &str| -> Option<Value> {
        let value = fields.remove(name);
        if value.is_none() {
            violations.push(Violation::new(format!("/{name}"), "is required"));
        }
        value
    };
    let event_id = take("eventId");
    let tenant_id = take("tenantId");
    let source = take("source");
    let event_type = take("type");
    let timestamp = take("timestampUtc");
    let schema_version = take("schemaVersion");
    let stream_key = take("streamKey");
    let payload = take("payload");
    for unknown in fields.keys() {
        violations.push(Violation::new(
            format!("/{}", escape_pointer(unknown)),
            "is not a field of the envelope",
        ));
    }

    let event_id = event_id.and_then(|v| check_uuid(v, &mut violations));
    let tenant_id = tenant_id.and_then(|v| {
        check_identifier(
            v,
            "/tenantId",
            64,
            is_tenant_char,
            "A-Z a-z 0-9 . _ -",
            &mut violations,
        )
    });
    let source = source.and_then(|v| {
        check_identifier(
            v,
            "/source",
            128,
            is_name_char,
            "A-Z a-z 0-9 . _ - : /",
            &mut violations,
        )
    });
    let event_type = event_type.and_then(|v| {
        check_identifier(
            v,
            "/type",
            128,
            is_name_char,
            "A-Z a-z 0-9 . _ - : /",
            &mut violations,
        )
    });
    let stream_key = stream_key.and_then(|v| {
        check_identifier(
            v,
            "/streamKey",
            256,
            is_stream_key_char,
            "printable ASCII except |",
            &mut violations,
        )
    });
    let timestamp = timestamp.and_then(|v| check_timestamp(v, limits, now, &mut violations));
    let schema_version = schema_version.and_then(|v| check_schema_version(v, &mut violations));
    let payload = payload.and_then(|v| check_payload(v, limits, &mut violations));

    match (
        event_id,
        tenant_id,
        source,
        event_type,
        timestamp,
        schema_version,
        stream_key,
        payload,
    ) {
        (
            Some(event_id),
            Some(tenant_id),
            Some(source),
            Some(event_type),
            Some(timestamp_utc),
            Some(schema_version),
            Some(stream_key),
            Some(payload),
        ) if violations.is_empty() => Ok(EventEnvelope {
            event_id,
            tenant_id,
            source,
            event_type,
            timestamp_utc,
            schema_version,
            stream_key,
            payload,
        }),
        _ => Err(EnvelopeError::Invalid { violations }),
    }
}

/// Escapes a key for use in a JSON pointer (RFC 6901: `~` → `~0`, `/` → `~1`).
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_uuid(value: Value, violations: &mut Vec<Violation>) -> Option<Uuid> {
    let Value::String(text) = value else {
        violations.push(Violation::new(
            "/eventId",
            format!("must be a UUID string, not {}", type_name(&value)),
        ));
        return None;
    };
    // Only the hyphenated form, so that one id has one spelling.
    match Uuid::try_parse(&text) {
        Ok(id) if text.len() == 36 => Some(id),
        _ => {
            violations.push(Violation::new(
                "/eventId",
                "must be a UUID in hyphenated form (8-4-4-4-12 hex digits)",
            ));
            None
        }
    }
}

fn is_tenant_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')
}

fn is_stream_key_char(c: char) -> bool {
    c.is_ascii_graphic() && c != '|'
}

fn check_identifier(
    value: Value,
    pointer: &str,
    max_len: usize,
    allowed: fn(char) -> bool,
    allowed_text: &str,
    violations: &mut Vec<Violation>,
) -> Option<String> {
    let Value::String(text) = value else {
        violations.push(Violation::new(
            pointer,
            format!("must be a string, not {}", type_name(&value)),
        ));
        return None;
    };
    if text.is_empty() {
        violations.push(Violation::new(pointer, "must not be empty"));
        return None;
    }
    if text.chars().count() > max_len {
        violations.push(Violation::new(
            pointer,
            format!("must be at most {max_len} characters"),
        ));
        return None;
    }
    if let Some(bad) = text.chars().find(|&c| !allowed(c)) {
        violations.push(Violation::new(
            pointer,
            format!("contains {bad:?}; allowed characters are {allowed_text}"),
        ));
        return None;
    }
    Some(text)
}

fn check_timestamp(
    value: Value,
    limits: &EnvelopeLimits,
    now: DateTime<Utc>,
    violations: &mut Vec<Violation>,
) -> Option<DateTime<FixedOffset>> {
    let Value::String(text) = value else {
        violations.push(Violation::new(
            "/timestampUtc",
            format!("must be an RFC 3339 string, not {}", type_name(&value)),
        ));
        return None;
    };
    let Ok(timestamp) = DateTime::parse_from_rfc3339(&text) else {
        violations.push(Violation::new(
            "/timestampUtc",
            "must be an RFC 3339 timestamp with an offset, e.g. 2026-11-24T10:00:00Z",
        ));
        return None;
    };
    if timestamp.with_timezone(&Utc) > now + limits.max_future_skew {
        violations.push(Violation::new(
            "/timestampUtc",
            format!(
                "is more than {} s in the future",
                limits.max_future_skew.num_seconds()
            ),
        ));
        return None;
    }
    Some(timestamp)
}

fn check_schema_version(value: Value, violations: &mut Vec<Violation>) -> Option<i32> {
    match value.as_u64().and_then(|v| i32::try_from(v).ok()) {
        Some(version) if version >= 1 => Some(version),
        _ => {
            violations.push(Violation::new(
                "/schemaVersion",
                format!("must be an integer from 1 to {}", i32::MAX),
            ));
            None
        }
    }
}

fn check_payload(
    value: Value,
    limits: &EnvelopeLimits,
    violations: &mut Vec<Violation>,
) -> Option<Map<String, Value>> {
    let Value::Object(payload) = value else {
        violations.push(Violation::new(
            "/payload",
            format!("must be a JSON object, not {}", type_name(&value)),
        ));
        return None;
    };
    let before = violations.len();
    for (key, child) in &payload {
        check_payload_value(key, child, "/payload", 2, limits, violations);
    }
    (violations.len() == before).then_some(payload)
}

fn check_payload_value(
    key: &str,
    value: &Value,
    parent: &str,
    depth: usize,
    limits: &EnvelopeLimits,
    violations: &mut Vec<Violation>,
) {
    let pointer = format!("{parent}/{}", escape_pointer(key));
    if key.contains('\0') {
        violations.push(Violation::new(parent, "has a key with a NUL character"));
    }
    match value {
        Value::String(text) if text.contains('\0') => {
            violations.push(Violation::new(
                pointer,
                "contains a NUL character (\\u0000), which cannot be stored",
            ));
        }
        Value::Array(_) | Value::Object(_) if depth > limits.max_depth => {
            violations.push(Violation::new(
                pointer,
                format!("nests deeper than {} levels", limits.max_depth),
            ));
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                check_payload_value(
                    &index.to_string(),
                    item,
                    &pointer,
                    depth + 1,
                    limits,
                    violations,
                );
            }
        }
        Value::Object(map) => {
            for (child_key, child) in map {
                check_payload_value(child_key, child, &pointer, depth + 1, limits, violations);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Value {
        serde_json::json!({
            "eventId": "0b6f6f5e-8a53-4c8e-9a35-5a3f0a0e9f11",
            "tenantId": "acme",
            "source": "checkout",
            "type": "order.created",
            "timestampUtc": "2026-11-24T10:00:00.250+01:00",
            "schemaVersion": 1,
            "streamKey": "order-42",
            "payload": {"orderId": 42, "total": 9.5}
        })
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn check(value: &Value) -> Result<EventEnvelope, EnvelopeError> {
        parse_envelope(
            &serde_json::to_vec(value).unwrap(),
            &EnvelopeLimits::default(),
            now(),
        )
    }

    fn violations(value: &Value) -> Vec<Violation> {
        match check(value) {
            Err(EnvelopeError::Invalid { violations }) => violations,
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_valid_envelope() {
        let envelope = check(&valid()).expect("valid envelope");
        assert_eq!(envelope.tenant_id, "acme");
        assert_eq!(envelope.event_type, "order.created");
        assert_eq!(envelope.schema_version, 1);
        assert_eq!(envelope.record_key(), "acme|order-42");
        assert_eq!(envelope.timestamp_utc.offset().local_minus_utc(), 3600);
        assert_eq!(envelope.payload["orderId"], 42);
    }

    #[test]
    fn malformed_json_is_reported_with_its_position() {
        let err = parse_envelope(b"{\"eventId\": ", &EnvelopeLimits::default(), now());
        assert!(
            matches!(
                err,
                Err(EnvelopeError::MalformedJson {
                    line: 1,
                    column: 12,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn every_violation_is_listed_with_its_pointer() {
        let body = serde_json::json!({
            "eventId": "not-a-uuid",
            "tenantId": "",
            "source": "has space",
            "type": 7,
            "timestampUtc": "2026-11-24 10:00",
            "schemaVersion": 0,
            "streamKey": "a|b",
            "payload": [1],
            "extra": true
        });
        let pointers: Vec<String> = violations(&body).into_iter().map(|v| v.pointer).collect();
        assert_eq!(
            pointers,
            [
                "/extra",
                "/eventId",
                "/tenantId",
                "/source",
                "/type",
                "/streamKey",
                "/timestampUtc",
                "/schemaVersion",
                "/payload"
            ]
        );
    }

    #[test]
    fn missing_fields_are_required() {
        let found = violations(&serde_json::json!({}));
        assert_eq!(found.len(), 8);
        assert!(found.iter().all(|v| v.detail == "is required"));
        assert_eq!(violations(&serde_json::json!([1]))[0].pointer, "");
    }

    #[test]
    fn individual_rules() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "eventId",
                serde_json::json!("0b6f6f5e8a534c8e9a355a3f0a0e9f11"),
                "hyphenated",
            ),
            ("tenantId", serde_json::json!("a".repeat(65)), "at most 64"),
            ("tenantId", serde_json::json!("ac/me"), "allowed characters"),
            (
                "streamKey",
                serde_json::json!("k\u{0}"),
                "allowed characters",
            ),
            ("streamKey", serde_json::json!("ключ"), "allowed characters"),
            (
                "timestampUtc",
                serde_json::json!("2026-11-24T10:00:00"),
                "RFC 3339",
            ),
            (
                "timestampUtc",
                serde_json::json!("2026-11-24T12:06:00Z"),
                "in the future",
            ),
            ("schemaVersion", serde_json::json!("1"), "integer"),
            ("schemaVersion", serde_json::json!(1.5), "integer"),
            (
                "schemaVersion",
                serde_json::json!(4_294_967_296u64),
                "integer",
            ),
            ("payload", serde_json::json!("{}"), "JSON object"),
            ("payload", serde_json::json!({"a": "x\u{0}y"}), "NUL"),
        ];
        for (field, value, expected) in cases {
            let mut body = valid();
            body[field] = value.clone();
            let found = violations(&body);
            assert_eq!(found.len(), 1, "{field}={value}: {found:?}");
            assert!(
                found[0].pointer.starts_with(&format!("/{field}")),
                "{found:?}"
            );
            assert!(
                found[0].detail.contains(expected),
                "{field}={value}: {:?} does not mention {expected:?}",
                found[0].detail
            );
        }
    }

    #[test]
    fn timestamps_within_the_skew_are_accepted() {
        let mut body = valid();
        body["timestampUtc"] = serde_json::json!("2026-11-24T12:04:59Z");
        assert!(check(&body).is_ok());
    }

    #[test]
    fn nesting_depth_is_bounded_and_pointed_at() {
        let mut deep = serde_json::json!(1);
        for _ in 0..40 {
            deep = serde_json::json!({ "n": deep });
        }
        let mut body = valid();
        body["payload"] = deep;
        let found = violations(&body);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pointer, format!("/payload{}", "/n".repeat(32)));
        let mut ok = serde_json::json!(1);
        for _ in 0..31 {
            ok = serde_json::json!({ "n": ok });
        }
        body["payload"] = ok;
        assert!(
            check(&body).is_ok(),
            "31 nested levels under payload are fine"
        );
    }

    #[test]
    fn pointer_escapes_slash_and_tilde() {
        let mut body = valid();
        body["payload"] = serde_json::json!({"a/b~c": "\u{0}"});
        assert_eq!(violations(&body)[0].pointer, "/payload/a~1b~0c");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                ".{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(6, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,6}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn valid_envelope() -> impl Strategy<Value = Value> {
            (
                any::<u128>(),
                "[a-z0-9._-]{1,64}",
                "[a-zA-Z0-9._:/-]{1,128}",
                "[a-zA-Z0-9._:/-]{1,128}",
                "[!-{}~]{1,256}",
                1i32..,
                0i64..1_700_000_000,
                prop::collection::btree_map("[a-z]{1,8}", json_value(), 0..6),
            )
                .prop_map(
                    |(id, tenant, source, kind, stream, version, secs, payload)| {
                        let at = DateTime::from_timestamp(secs, 0).unwrap();
                        serde_json::json!({
                            "eventId": Uuid::from_u128(id).to_string(),
                            "tenantId": tenant,
                            "source": source,
                            "type": kind,
                            "timestampUtc": at.to_rfc3339(),
                            "schemaVersion": version,
                            "streamKey": stream,
                            "payload": Value::Object(payload.into_iter().collect()),
                        })
                    },
                )
        }

        fn has_nul(value: &Value) -> bool {
            match value {
                Value::String(s) => s.contains('\0'),
                Value::Array(items) => items.iter().any(has_nul),
                Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
                _ => false,
            }
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
                let _ = parse_envelope(&bytes, &EnvelopeLimits::default(), now());
            }

            #[test]
            fn arbitrary_json_is_accepted_or_explained(value in json_value()) {
                let bytes = serde_json::to_vec(&value).unwrap();
                match parse_envelope(&bytes, &EnvelopeLimits::default(), now()) {
                    Ok(_) => prop_assert!(false, "a random document passed as an envelope"),
                    Err(EnvelopeError::Invalid { violations }) => {
                        prop_assert!(!violations.is_empty());
                        for v in violations {
                            prop_assert!(v.pointer.is_empty() || v.pointer.starts_with('/'));
                            prop_assert!(!v.detail.is_empty());
                        }
                    }
                    Err(other) => prop_assert!(false, "valid JSON reported as {other:?}"),
                }
            }

            #[test]
            fn valid_envelopes_parse_and_keep_their_fields(value in valid_envelope()) {
                prop_assume!(!has_nul(&value["payload"]));
                let bytes = serde_json::to_vec(&value).unwrap();
                let envelope = parse_envelope(&bytes, &EnvelopeLimits::default(), now())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(envelope.event_id.to_string(), value["eventId"].as_str().unwrap());
                prop_assert_eq!(&envelope.tenant_id, value["tenantId"].as_str().unwrap());
                prop_assert_eq!(&envelope.stream_key, value["streamKey"].as_str().unwrap());
                prop_assert_eq!(Value::Object(envelope.payload), value["payload"].clone());
            }

            #[test]
            fn one_wrong_field_is_one_violation_at_its_pointer(
                value in valid_envelope(),
                field in prop::sample::select(vec!["eventId", "tenantId", "source", "type", "timestampUtc", "schemaVersion", "streamKey", "payload"]),
                replacement in prop_oneof![Just(Value::Null), Just(Value::Bool(true)), Just(serde_json::json!([1]))],
            ) {
                prop_assume!(!has_nul(&value["payload"]));
                let mut broken = value.clone();
                broken[field] = replacement;
                let bytes = serde_json::to_vec(&broken).unwrap();
                match parse_envelope(&bytes, &EnvelopeLimits::default(), now()) {
                    Err(EnvelopeError::Invalid { violations }) => {
                        prop_assert_eq!(violations.len(), 1, "{:?}", violations);
                        prop_assert_eq!(&violations[0].pointer, &format!("/{field}"));
                    }
                    other => prop_assert!(false, "{field} broken but got {other:?}"),
                }
            }
        }
    }
}
