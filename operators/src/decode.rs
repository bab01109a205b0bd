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

/// Decodes one record with the gateway's envelope rules. The received time comes from the
/// gateway's header, else the record's timestamp, else `fallback_now`; it is also the reference
/// time of the future-skew rule, so a record is judged as it was when it arrived.
pub fn decode_record(
    record: SourceRecord,
    limits: &EnvelopeLimits,
    schemas: Option<&SchemaRegistry>,
    fallback_now: DateTime<Utc>,
) -> Result<EventRow, DeadLetter> {
    let trace_id = record.headers.traceparent.map(|ctx| ctx.trace_id_hex());
    let received_utc = record
        .headers
        .received_at
        .or_else(|| {
            record
                .timestamp_ms
                .and_then(DateTime::<Utc>::from_timestamp_millis)
        })
        .unwrap_or(fallback_now);
    let dead_letter = |reason: DeadLetterReason, message: String, record: SourceRecord| {
        let identity = EventIdentity::salvage(
            record.value.as_deref(),
            record.key.as_deref(),
            record.headers.idempotency_key.clone(),
        );
        DeadLetter {
            reason,
            message,
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
            None => canonical_hash(&document),
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

    fn record(offset: i64, value: Option<&str>) -> SourceRecord {
        SourceRecord {
            topic: "events.raw.v1".into(),
            partition: 3,
            offset,
            timestamp_ms: Some(1_800_000_000_000),
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
        assert_eq!(row.received_utc.timestamp_millis(), 1_800_000_000_000);
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
