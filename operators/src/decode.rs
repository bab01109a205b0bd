//! Operator: decodes raw source records into `(events, dead letters)`; failures are data.

use chrono::{DateTime, Utc};
use timely::dataflow::operators::OkErr;
use timely::dataflow::StreamVec;
use timely::progress::Timestamp;

use crate::canonical::canonical_hash;
use crate::envelope::{envelope_from_value, parse_json, EnvelopeError, EnvelopeLimits};
use crate::record::{DeadLetter, DeadLetterReason, EventIdentity, EventRow, SourceRecord};
use crate::validate::{SchemaRegistry, SchemaRejection, SharedRegistry};
use std::sync::Arc;

/// Longest dead-letter message kept, in bytes: the message is stored in the dead letter's row
/// and sent as a header of its record on the dead-letter topic, and a schema's violations quote
/// the offending values whole, so one large value must not make the record too large to send.
pub const MAX_DEAD_LETTER_MESSAGE_BYTES: usize = 4096;

/// `message`, cut at a character boundary to at most [`MAX_DEAD_LETTER_MESSAGE_BYTES`] with a
/// note of how much was left out.
pub fn bounded_message(mut message: String) -> String {
    if message.len() <= MAX_DEAD_LETTER_MESSAGE_BYTES {
        return message;
    }
    let total = message.len();
    let mut cut = MAX_DEAD_LETTER_MESSAGE_BYTES - 64;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(&format!(" … ({} more bytes not shown)", total - cut));
    message
}

/// The receive time a record claims (the gateway's header, else its Kafka timestamp), when it
/// is believable: from 1970 on and not ahead of this worker's clock by more than
/// `max_future_skew`. A gateway never writes another; a producer of another kind can, and a
/// time far ahead would make de-duplication forget every event (it remembers by receive time)
/// and one out of range would fail its batch's commit.
fn believable_received_time(
    claimed: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    max_future_skew: chrono::TimeDelta,
) -> Option<DateTime<Utc>> {
    let latest = now.checked_add_signed(max_future_skew).unwrap_or(now);
    claimed.filter(|at| at.timestamp() >= 0 && *at <= latest)
}

/// Decodes one record with the gateway's envelope rules. The received time comes from the
/// gateway's header, else the record's timestamp, else `fallback_now` (also when the one it
/// claims is not believable: before 1970, or ahead of `fallback_now` by more than the
/// future-skew limit); it is also the reference time of the future-skew rule, so a record is
/// judged as it was when it arrived.
pub fn decode_record(
    record: SourceRecord,
    limits: &EnvelopeLimits,
    schemas: Option<&SchemaRegistry>,
    fallback_now: DateTime<Utc>,
) -> Result<EventRow, DeadLetter> {
    let trace_id = record.headers.traceparent.map(|ctx| ctx.trace_id_hex());
    let received_utc = believable_received_time(
        record.headers.received_at.or_else(|| {
            record
                .timestamp_ms
                .and_then(DateTime::<Utc>::from_timestamp_millis)
        }),
        fallback_now,
        limits.max_future_skew,
    )
    .unwrap_or(fallback_now);
    let dead_letter = |reason: DeadLetterReason, message: String, record: SourceRecord| {
        let identity = EventIdentity::salvage(
            record.value.as_deref(),
            record.key.as_deref(),
            record.headers.idempotency_key.clone(),
        );
        DeadLetter {
            reason,
            message: bounded_message(message),
            partition: record.partition,
            offset: record.offset,
            key: record.key,
            original: record.value.unwrap_or_default(),
            trace_id: trace_id.clone(),
            trace_parent: record.headers.traceparent,
            received_utc: Some(received_utc),
            identity,
        }
    };
    let Some(value) = record.value.as_deref() else {
        let message = "record has no value".to_owned();
        return Err(dead_letter(DeadLetterReason::Undecodable, message, record));
    };
    let parsed = parse_json(value).and_then(|document| {
        // Trust the gateway's hash; compute it for records from other producers.
        let hash = match &record.headers.payload_hash {
            Some(hash) => hash.clone(),
            None => canonical_hash(&document)?,
        };
        envelope_from_value(document, limits, received_utc).map(|envelope| (envelope, hash))
    });
    let (envelope, payload_hash) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => {
            let reason = match err {
                EnvelopeError::MalformedJson { .. } => DeadLetterReason::Undecodable,
                EnvelopeError::Invalid { .. } => DeadLetterReason::InvalidEnvelope,
            };
            return Err(dead_letter(reason, err.to_string(), record));
        }
    };
    let payload = serde_json::Value::Object(envelope.payload);
    if let Some(schemas) = schemas {
        let checked = schemas.check(
            &envelope.tenant_id,
            &envelope.event_type,
            envelope.schema_version,
            &payload,
        );
        if let Err(rejection) = checked {
            let (reason, message) = match rejection {
                SchemaRejection::UnknownType => (
                    DeadLetterReason::UnknownEventType,
                    format!(
                        "no schema is registered for type {:?} version {}",
                        envelope.event_type, envelope.schema_version
                    ),
                ),
                SchemaRejection::Violations(violations) => (
                    DeadLetterReason::SchemaViolation,
                    EnvelopeError::Invalid { violations }.to_string(),
                ),
            };
            let mut dead = dead_letter(reason, message, record);
            dead.identity = EventIdentity {
                tenant_id: Some(envelope.tenant_id),
                event_id: Some(envelope.event_id),
                event_type: Some(envelope.event_type),
                source: Some(envelope.source),
                stream_key: Some(envelope.stream_key),
                idempotency_key: dead.identity.idempotency_key,
            };
            return Err(dead);
        }
    }
    Ok(EventRow {
        event_id: envelope.event_id,
        tenant_id: envelope.tenant_id,
        source: envelope.source,
        event_type: envelope.event_type,
        stream_key: envelope.stream_key,
        timestamp_utc: envelope.timestamp_utc.with_timezone(&Utc),
        schema_version: envelope.schema_version,
        payload_json: payload.to_string(),
        received_utc,
        trace_id: trace_id.clone(),
        trace_parent: record.headers.traceparent,
        payload_hash,
        idempotency_key: record.headers.idempotency_key.clone(),
        partition: record.partition,
        offset: record.offset,
        key: record.key,
        original: record.value.unwrap_or_default(),
    })
}

/// Splits a stream of raw records into decoded events and dead letters, checking payloads
/// against the current schemas of `schemas` when given.
pub fn decode_records<'scope, T: Timestamp>(
    records: StreamVec<'scope, T, SourceRecord>,
    limits: EnvelopeLimits,
    schemas: Option<SharedRegistry>,
) -> (
    StreamVec<'scope, T, EventRow>,
    StreamVec<'scope, T, DeadLetter>,
) {
    records.ok_err(move |record| {
        let current = schemas
            .as_ref()
            .map(|shared| Arc::clone(&shared.read().expect("schema registry lock")));
        let parent = record.headers.traceparent;
        let (topic, partition, offset) =
            (Arc::clone(&record.topic), record.partition, record.offset);
        let started = std::time::SystemTime::now();
        let decoded = decode_record(record, &limits, current.as_deref(), Utc::now());
        if crate::spans::enabled() && parent.is_some() {
            validate_span(&decoded, parent, started, &topic, partition, offset);
        }
        decoded
    })
}

/// The `pipeline.validate` span of one record: its outcome and, when known, its event.
fn validate_span(
    decoded: &Result<EventRow, DeadLetter>,
    parent: Option<crate::trace_context::TraceContext>,
    started: std::time::SystemTime,
    topic: &str,
    partition: i32,
    offset: i64,
) {
    use opentelemetry::KeyValue;
    let mut attributes = crate::spans::messaging_attributes("process", topic, partition, offset);
    match decoded {
        Ok(row) => {
            attributes.extend(crate::spans::event_attributes(
                &row.tenant_id,
                &row.event_id.to_string(),
                &row.event_type,
                &row.source,
                &row.stream_key,
                row.idempotency_key.as_deref(),
            ));
            attributes.push(KeyValue::new("validation.outcome", "valid"));
        }
        Err(dead) => {
            attributes.push(KeyValue::new("validation.outcome", dead.reason.code()));
            if let Some(tenant) = &dead.identity.tenant_id {
                attributes.push(KeyValue::new("tenant.id", tenant.clone()));
            }
            if let Some(id) = dead.identity.event_id {
                attributes.push(KeyValue::new("event.id", id.to_string()));
            }
        }
    }
    crate::spans::Hop::new(
        "pipeline.validate",
        opentelemetry::trace::SpanKind::Internal,
        parent,
        started,
        std::time::SystemTime::now(),
    )
    .with(attributes)
    .record();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::RecordHeaders;
    use crate::trace_context::TraceContext;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::{Capture, ToStream};

    /// 2026-11-30T02:13:20Z: after [`VALID`]'s event time, before any run of these tests.
    const RECORD_TIME_MS: i64 = 1_796_000_000_000;

    fn record(offset: i64, value: Option<&str>) -> SourceRecord {
        SourceRecord {
            topic: "events.raw.v1".into(),
            partition: 3,
            offset,
            timestamp_ms: Some(RECORD_TIME_MS),
            key: Some(b"acme|k".to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            headers: RecordHeaders::default(),
        }
    }

    const VALID: &str = r#"{"eventId":"0b6f6f5e-8a53-4c8e-9a35-5a3f0a0e9f11","tenantId":"acme","source":"s","type":"t","timestampUtc":"2026-11-24T10:00:00+02:00","schemaVersion":1,"streamKey":"k","payload":{"x":1}}"#;

    #[test]
    fn decodes_a_valid_record_with_its_headers() {
        let mut rec = record(7, Some(VALID));
        let ctx = TraceContext::mint();
        let received = Utc::now();
        rec.headers.traceparent = Some(ctx);
        rec.headers.received_at = Some(received);
        let row =
            decode_record(rec, &EnvelopeLimits::default(), None, Utc::now()).expect("valid record");
        assert_eq!(row.tenant_id, "acme");
        assert_eq!(row.payload_json, r#"{"x":1}"#);
        assert_eq!(row.schema_version, 1);
        assert_eq!(row.timestamp_utc.to_rfc3339(), "2026-11-24T08:00:00+00:00");
        assert_eq!(row.received_utc, received);
        assert_eq!(row.trace_id, Some(ctx.trace_id_hex()));
        assert_eq!((row.partition, row.offset), (3, 7));
    }

    #[test]
    fn received_time_falls_back_to_the_record_timestamp() {
        let row = decode_record(
            record(0, Some(VALID)),
            &EnvelopeLimits::default(),
            None,
            Utc::now(),
        )
        .unwrap();
        assert_eq!(row.received_utc.timestamp_millis(), RECORD_TIME_MS);
    }

    #[test]
    fn an_unbelievable_received_time_gives_way_to_the_workers_clock() {
        let now = Utc::now();
        let decode = |rec: SourceRecord| {
            decode_record(rec, &EnvelopeLimits::default(), None, now).expect("valid record")
        };
        // Ahead of the worker's clock by more than the future-skew limit (5 min), from the
        // gateway's header or from the Kafka timestamp: a year ahead, and chrono's last day.
        let mut ahead = record(0, Some(VALID));
        ahead.headers.received_at = Some(now + chrono::TimeDelta::days(365));
        assert_eq!(decode(ahead).received_utc, now);
        let mut last_day = record(0, Some(VALID));
        last_day.timestamp_ms = Some(DateTime::<Utc>::MAX_UTC.timestamp_millis() - 1_000);
        assert_eq!(decode(last_day).received_utc, now);
        // Before 1970 (and before PostgreSQL's range), from the Kafka timestamp.
        let mut ancient = record(0, Some(VALID));
        ancient.timestamp_ms = Some(-300_000_000_000_000);
        assert_eq!(decode(ancient).received_utc, now);
        // Within the limit, the claimed time stands.
        let mut close = record(0, Some(VALID));
        let claimed = now + chrono::TimeDelta::minutes(4);
        close.headers.received_at = Some(claimed);
        assert_eq!(decode(close).received_utc, claimed);
    }

    #[test]
    fn a_dead_letter_message_is_bounded_whatever_the_violations_quote() {
        let long = "é".repeat(10_000);
        let bounded = bounded_message(long.clone());
        assert!(
            bounded.len() <= MAX_DEAD_LETTER_MESSAGE_BYTES,
            "{}",
            bounded.len()
        );
        assert!(bounded.ends_with("more bytes not shown)"), "{bounded}");
        assert!(bounded.starts_with("éé"));
        assert_eq!(bounded_message("short".into()), "short");
        // Through decode: a schema violation quotes the 100 KB value it refuses.
        let mut schemas = SchemaRegistry::new(crate::validate::UnknownTypePolicy::Accept);
        let schema = serde_json::json!({"type": "object",
            "properties": {"note": {"type": "string", "maxLength": 10}}});
        schemas.add(None, "t", 1, &schema).unwrap();
        let huge = VALID.replace(r#"{"x":1}"#, &format!(r#"{{"note":"{long}"}}"#));
        let dl = decode_record(
            record(1, Some(&huge)),
            &EnvelopeLimits::default(),
            Some(&schemas),
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(dl.reason, DeadLetterReason::SchemaViolation);
        assert!(dl.message.len() <= MAX_DEAD_LETTER_MESSAGE_BYTES);
        assert!(
            dl.message.contains("more bytes not shown"),
            "{}",
            dl.message
        );
        assert_eq!(dl.original, huge.as_bytes());
    }

    #[test]
    fn poison_records_keep_their_bytes_and_reason() {
        let dl = decode_record(
            record(1, Some("{oops")),
            &EnvelopeLimits::default(),
            None,
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(dl.reason, DeadLetterReason::Undecodable);
        assert_eq!(dl.original, b"{oops");
        let dl = decode_record(
            record(2, Some(r#"{"eventId":1}"#)),
            &EnvelopeLimits::default(),
            None,
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!(dl.reason, DeadLetterReason::InvalidEnvelope);
        let dl = decode_record(
            record(3, None),
            &EnvelopeLimits::default(),
            None,
            Utc::now(),
        )
        .unwrap_err();
        assert_eq!((dl.reason, dl.offset), (DeadLetterReason::Undecodable, 3));
    }

    #[test]
    fn operator_splits_records_into_events_and_dead_letters() {
        let (ok_tx, ok_rx) = std::sync::mpsc::channel();
        let (err_tx, err_rx) = std::sync::mpsc::channel();
        let ok_tx = std::sync::Mutex::new(ok_tx);
        let err_tx = std::sync::Mutex::new(err_tx);
        timely::execute(timely::Config::thread(), move |worker| {
            let ok_tx = ok_tx.lock().unwrap().clone();
            let err_tx = err_tx.lock().unwrap().clone();
            worker.dataflow::<u64, _, _>(|scope| {
                let input = vec![
                    record(0, Some(VALID)),
                    record(1, Some("[]")),
                    record(2, Some(VALID)),
                ]
                .to_stream(scope)
                .container::<Vec<_>>();
                let (events, dead) = decode_records(input, EnvelopeLimits::default(), None);
                events.capture_into(ok_tx);
                dead.capture_into(err_tx);
            });
        })
        .unwrap();
        let events: Vec<i64> = ok_rx
            .extract()
            .into_iter()
            .flat_map(|(_, rows): (u64, Vec<EventRow>)| rows)
            .map(|row| row.offset)
            .collect();
        let dead: Vec<i64> = err_rx
            .extract()
            .into_iter()
            .flat_map(|(_, rows): (u64, Vec<DeadLetter>)| rows)
            .map(|row| row.offset)
            .collect();
        assert_eq!(events, vec![0, 2], "valid records become events");
        assert_eq!(dead, vec![1], "the non-envelope record is dead-lettered");
    }
}
