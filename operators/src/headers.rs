//! The Kafka record headers every hop shares: trace context, idempotency key, received time and
//! payload hash. The gateway writes them; the dataflow, the sinks and telemetry read them.
//!
//! Header values are UTF-8 text so that any Kafka tool can show them.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::trace_context::TraceContext;

/// W3C `traceparent` of the gateway's receive span; every later hop is its descendant.
pub const TRACEPARENT: &str = "traceparent";
/// W3C `tracestate`, passed through unchanged when the client sent one.
pub const TRACESTATE: &str = "tracestate";
/// The client's `Idempotency-Key` for this event.
pub const IDEMPOTENCY_KEY: &str = "sentinel-idempotency-key";
/// When the gateway received the request: RFC 3339, UTC, microseconds.
pub const RECEIVED_AT: &str = "sentinel-received-at";
/// SHA-256 (hex) of the canonical form of the envelope.
pub const PAYLOAD_HASH: &str = "sentinel-payload-hash";

/// The decoded set of Sentinel's record headers; unknown headers are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordHeaders {
    /// Trace position of the gateway's receive span.
    pub traceparent: Option<TraceContext>,
    /// Vendor trace state, passed through.
    pub tracestate: Option<String>,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// When the gateway received the event.
    pub received_at: Option<DateTime<Utc>>,
    /// Hex SHA-256 of the canonical envelope.
    pub payload_hash: Option<String>,
}

impl RecordHeaders {
    /// The headers as (name, value) pairs, in a fixed order, for the producer.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::with_capacity(5);
        if let Some(ctx) = &self.traceparent {
            pairs.push((TRACEPARENT, ctx.to_string()));
        }
        if let Some(state) = &self.tracestate {
            pairs.push((TRACESTATE, state.clone()));
        }
        if let Some(key) = &self.idempotency_key {
            pairs.push((IDEMPOTENCY_KEY, key.clone()));
        }
        if let Some(at) = &self.received_at {
            pairs.push((RECEIVED_AT, format_received_at(at)));
        }
        if let Some(hash) = &self.payload_hash {
            pairs.push((PAYLOAD_HASH, hash.clone()));
        }
        pairs
    }

    /// Decodes the headers of a consumed record. A header that is not valid UTF-8, or whose value
    /// does not parse, is treated as absent: headers are metadata, never a reason to drop data.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Self {
        let mut headers = Self::default();
        for (name, value) in pairs {
            let Some(text) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
                continue;
            };
            match name {
                TRACEPARENT => headers.traceparent = TraceContext::parse(text),
                TRACESTATE => headers.tracestate = Some(text.to_owned()),
                IDEMPOTENCY_KEY => headers.idempotency_key = Some(text.to_owned()),
                RECEIVED_AT => {
                    headers.received_at = DateTime::parse_from_rfc3339(text)
                        .ok()
                        .map(|at| at.with_timezone(&Utc))
                }
                PAYLOAD_HASH => headers.payload_hash = Some(text.to_owned()),
                _ => {}
            }
        }
        headers
    }
}

/// The time now, at the precision the `sentinel-received-at` header carries (microseconds): the
/// gateway stamps an event with it, so that the gateway and the dataflow, which reads the
/// header, judge the event against the same instant.
pub fn received_now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// Formats a received time the way the `sentinel-received-at` header and the API carry it.
pub fn format_received_at(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_pairs() {
        let headers = RecordHeaders {
            traceparent: Some(TraceContext::mint()),
            tracestate: Some("vendor=abc".into()),
            idempotency_key: Some("key-1".into()),
            received_at: Some(
                DateTime::parse_from_rfc3339("2026-11-24T10:00:00.123456Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
            payload_hash: Some("ab".repeat(32)),
        };
        let pairs = headers.to_pairs();
        let decoded =
            RecordHeaders::from_pairs(pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes()))));
        assert_eq!(decoded, headers);
    }

    #[test]
    fn a_received_time_survives_its_header_unchanged() {
        let now = received_now();
        let pairs = RecordHeaders {
            received_at: Some(now),
            ..RecordHeaders::default()
        }
        .to_pairs();
        let decoded =
            RecordHeaders::from_pairs(pairs.iter().map(|(k, v)| (*k, Some(v.as_bytes()))));
        assert_eq!(decoded.received_at, Some(now));
    }

    #[test]
    fn unparseable_or_unknown_headers_are_ignored() {
        let decoded = RecordHeaders::from_pairs([
            (RECEIVED_AT, Some(&b"yesterday"[..])),
            (TRACEPARENT, Some(&b"garbage"[..])),
            (IDEMPOTENCY_KEY, Some(&[0xff, 0xfe][..])),
            ("x-other", Some(&b"1"[..])),
            (TRACESTATE, None),
        ]);
        assert_eq!(decoded, RecordHeaders::default());
    }
}
