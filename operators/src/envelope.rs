//! The event envelope clients send, and the parser that both the gateway and the dataflow use.
//!
//! This is the foundation's contract: shape and types, RFC 3339 timestamps with an offset, a
//! JSON-object payload, and values PostgreSQL can store. Field-by-field validation with JSON
//! pointers extends [`parse_envelope`] without changing its callers.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// One domain event as a client sends it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventEnvelope {
    /// Client-chosen unique id of the event.
    pub event_id: Uuid,
    /// Tenant the event belongs to.
    pub tenant_id: String,
    /// The emitting service.
    pub source: String,
    /// Event type, e.g. `order.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the event happened, RFC 3339 with an offset.
    #[serde(deserialize_with = "rfc3339")]
    pub timestamp_utc: DateTime<FixedOffset>,
    /// Version of the payload's schema, 1 or more.
    pub schema_version: u32,
    /// The entity stream the event belongs to (its ordering and partitioning key).
    pub stream_key: String,
    /// The event's payload: a JSON object, kept as the exact text the client sent.
    pub payload: Box<RawValue>,
}

impl EventEnvelope {
    /// The Kafka record key: `tenantId|streamKey`, so one stream stays in one partition.
    pub fn record_key(&self) -> String {
        format!("{}|{}", self.tenant_id, self.stream_key)
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
    /// The body is JSON but not an envelope.
    #[error("event does not match the envelope contract: {message}")]
    Contract {
        /// What is wrong, naming the field.
        message: String,
    },
}

impl EnvelopeError {
    /// Envelope errors are the sender's fault: retrying the same bytes never helps.
    pub fn is_retriable(&self) -> bool {
        false
    }
}

fn rfc3339<'de, D: Deserializer<'de>>(de: D) -> Result<DateTime<FixedOffset>, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(de)?;
    DateTime::parse_from_rfc3339(&text).map_err(|e| {
        serde::de::Error::custom(format_args!(
            "timestampUtc {text:?} is not an RFC 3339 timestamp with offset: {e}"
        ))
    })
}

/// Parses and checks an envelope from the exact bytes a client sent.
pub fn parse_envelope(bytes: &[u8]) -> Result<EventEnvelope, EnvelopeError> {
    let envelope: EventEnvelope = serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => EnvelopeError::MalformedJson {
                message: strip_position(&e.to_string()),
                line: e.line(),
                column: e.column(),
            },
            Category::Data => EnvelopeError::Contract {
                message: strip_position(&e.to_string()),
            },
        }
    })?;
    check_envelope(&envelope)?;
    Ok(envelope)
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

fn contract(message: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Contract {
        message: message.into(),
    }
}

fn check_envelope(envelope: &EventEnvelope) -> Result<(), EnvelopeError> {
    for (field, value) in [
        ("tenantId", &envelope.tenant_id),
        ("source", &envelope.source),
        ("type", &envelope.event_type),
        ("streamKey", &envelope.stream_key),
    ] {
        if value.trim().is_empty() {
            return Err(contract(format!("{field} must not be empty")));
        }
        if value.contains('\0') {
            return Err(contract(format!("{field} must not contain NUL characters")));
        }
    }
    if envelope.tenant_id.contains('|') {
        return Err(contract("tenantId must not contain '|'"));
    }
    if envelope.schema_version == 0 {
        return Err(contract("schemaVersion must be 1 or more"));
    }
    let payload = envelope.payload.get();
    if !payload.trim_start().starts_with('{') {
        return Err(contract("payload must be a JSON object"));
    }
    if contains_escaped_nul(payload) {
        return Err(contract(
            "payload must not contain \\u0000: it cannot be stored as jsonb",
        ));
    }
    Ok(())
}

/// Whether JSON text contains the escape `\u0000` (and not an escaped backslash before `u0000`).
fn contains_escaped_nul(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut from = 0;
    while let Some(found) = json[from..].find("\\u0000") {
        let at = from + found;
        let backslashes = bytes[..=at]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 1 {
            return true;
        }
        from = at + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> serde_json::Value {
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

    fn parse_value(value: &serde_json::Value) -> Result<EventEnvelope, EnvelopeError> {
        parse_envelope(&serde_json::to_vec(value).unwrap())
    }

    #[test]
    fn parses_a_valid_envelope() {
        let envelope = parse_value(&valid()).expect("valid envelope");
        assert_eq!(envelope.tenant_id, "acme");
        assert_eq!(envelope.event_type, "order.created");
        assert_eq!(envelope.schema_version, 1);
        assert_eq!(envelope.record_key(), "acme|order-42");
        assert_eq!(envelope.timestamp_utc.offset().local_minus_utc(), 3600);
        let payload: serde_json::Value = serde_json::from_str(envelope.payload.get()).unwrap();
        assert_eq!(payload["orderId"], 42);
    }

    #[test]
    fn keeps_the_payload_text_exactly() {
        let body = br#"{"eventId":"0b6f6f5e-8a53-4c8e-9a35-5a3f0a0e9f11","tenantId":"t","source":"s","type":"x","timestampUtc":"2026-01-01T00:00:00Z","schemaVersion":2,"streamKey":"k","payload":{"b": 1.50, "a": [ ]}}"#;
        let envelope = parse_envelope(body).unwrap();
        assert_eq!(envelope.payload.get(), r#"{"b": 1.50, "a": [ ]}"#);
    }

    #[test]
    fn malformed_json_is_reported_with_its_position() {
        let err = parse_envelope(b"{\"eventId\": ").unwrap_err();
        assert!(
            matches!(err, EnvelopeError::MalformedJson { line: 1, .. }),
            "{err:?}"
        );
        let err = parse_envelope(b"not json").unwrap_err();
        assert!(
            matches!(err, EnvelopeError::MalformedJson { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn contract_violations_name_the_field() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("eventId", serde_json::json!("not-a-uuid"), "UUID"),
            (
                "tenantId",
                serde_json::json!(""),
                "tenantId must not be empty",
            ),
            ("tenantId", serde_json::json!("a|b"), "'|'"),
            (
                "timestampUtc",
                serde_json::json!("2026-11-24 10:00"),
                "RFC 3339",
            ),
            (
                "timestampUtc",
                serde_json::json!("2026-11-24T10:00:00"),
                "RFC 3339",
            ),
            ("schemaVersion", serde_json::json!(0), "schemaVersion"),
            ("schemaVersion", serde_json::json!("1"), "invalid type"),
            (
                "payload",
                serde_json::json!([1, 2]),
                "payload must be a JSON object",
            ),
            ("payload", serde_json::json!({"a": "x\u{0}y"}), "\\u0000"),
            ("streamKey", serde_json::json!("k\u{0}"), "NUL"),
        ];
        for (field, value, expected) in cases {
            let mut body = valid();
            body[field] = value.clone();
            let err = parse_value(&body).expect_err(&format!("{field}={value} accepted"));
            assert!(
                matches!(err, EnvelopeError::Contract { .. }),
                "{field}: {err:?}"
            );
            assert!(
                err.to_string().contains(expected),
                "{field}={value}: {err} does not mention {expected:?}"
            );
        }
    }

    #[test]
    fn missing_and_unknown_fields_are_contract_errors() {
        let mut body = valid();
        body.as_object_mut().unwrap().remove("streamKey");
        assert!(parse_value(&body)
            .unwrap_err()
            .to_string()
            .contains("streamKey"));
        let mut body = valid();
        body["extra"] = serde_json::json!(1);
        assert!(parse_value(&body)
            .unwrap_err()
            .to_string()
            .contains("extra"));
    }

    #[test]
    fn escaped_backslash_before_u0000_is_not_a_nul() {
        assert!(contains_escaped_nul(r#"{"a":"\u0000"}"#));
        assert!(!contains_escaped_nul(r#"{"a":"\\u0000"}"#));
        assert!(contains_escaped_nul(r#"{"a":"\\\u0000"}"#));
    }
}
