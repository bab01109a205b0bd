//! The shapes that flow through the dataflow: records as consumed, events ready to store, dead
//! letters that keep the original bytes, and per-partition progress for the commit point.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::headers::RecordHeaders;

/// One record as consumed from the raw topic, before any interpretation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// The topic the record was consumed from.
    pub topic: std::sync::Arc<str>,
    /// Partition of the topic.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Broker (or producer) timestamp of the record, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    /// The record key, as bytes.
    pub key: Option<Vec<u8>>,
    /// The record value: the exact bytes the client sent.
    pub value: Option<Vec<u8>>,
    /// Sentinel's decoded headers.
    pub headers: RecordHeaders,
}

/// Where the source has read up to in one partition: every record below `next_offset` has been
/// emitted into the dataflow. Committed in the same transaction as the records' effects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionProgress {
    /// The topic.
    pub topic: String,
    /// Partition of the topic.
    pub partition: i32,
    /// The offset to resume from.
    pub next_offset: i64,
}

/// A decoded event, ready for the `events` table. It keeps the original record bytes so that a
/// row the database rejects can still be dead-lettered exactly as it arrived.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventRow {
    /// The event's id.
    pub event_id: Uuid,
    /// Tenant.
    pub tenant_id: String,
    /// Emitting service.
    pub source: String,
    /// Event type.
    pub event_type: String,
    /// Entity stream key.
    pub stream_key: String,
    /// When the event happened (normalised to UTC).
    pub timestamp_utc: DateTime<Utc>,
    /// Payload schema version.
    pub schema_version: i32,
    /// The payload JSON object, as the client sent it.
    pub payload_json: String,
    /// When the gateway received it.
    pub received_utc: DateTime<Utc>,
    /// Trace id (32 hex digits) of the event's trace, when known.
    pub trace_id: Option<String>,
    /// The trace position the record carried (the gateway's receive span): the parent of the
    /// dataflow's spans about this event.
    pub trace_parent: Option<crate::trace_context::TraceContext>,
    /// SHA-256 (hex) of the canonical envelope: the gateway's header, else computed.
    pub payload_hash: String,
    /// The client's idempotency key, when the record carried one.
    pub idempotency_key: Option<String>,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The record key, as consumed.
    pub key: Option<Vec<u8>>,
    /// The record value, byte for byte, as consumed.
    pub original: Vec<u8>,
}

impl EventRow {
    /// Turns this event into a dead letter that keeps the original record.
    pub fn into_dead_letter(self, reason: DeadLetterReason, message: String) -> DeadLetter {
        DeadLetter {
            reason,
            message,
            partition: self.partition,
            offset: self.offset,
            key: self.key,
            original: self.original,
            trace_id: self.trace_id,
            trace_parent: self.trace_parent,
            received_utc: Some(self.received_utc),
            identity: EventIdentity {
                tenant_id: Some(self.tenant_id),
                event_id: Some(self.event_id),
                event_type: Some(self.event_type),
                source: Some(self.source),
                stream_key: Some(self.stream_key),
                idempotency_key: self.idempotency_key,
            },
        }
    }
}

/// Who a dead letter belongs to and which event it was, as far as the record tells: complete
/// for a valid envelope, best effort (string fields of the JSON, the `tenant|stream` key) for a
/// broken one. The tenant decides who may see and replay the dead letter.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventIdentity {
    /// Tenant, when known.
    pub tenant_id: Option<String>,
    /// Event id, when known.
    pub event_id: Option<Uuid>,
    /// Event type, when known.
    pub event_type: Option<String>,
    /// Emitting service, when known.
    pub source: Option<String>,
    /// Stream key, when known.
    pub stream_key: Option<String>,
    /// The client's idempotency key, from the record header.
    pub idempotency_key: Option<String>,
}

impl EventIdentity {
    /// Reads what it can from a record that did not decode into an envelope: the envelope's
    /// string fields when the value is a JSON object, else the tenant from the record key.
    pub fn salvage(
        value: Option<&[u8]>,
        key: Option<&[u8]>,
        idempotency_key: Option<String>,
    ) -> Self {
        let document: Option<serde_json::Map<String, serde_json::Value>> =
            value.and_then(|bytes| serde_json::from_slice(bytes).ok());
        let text = |field: &str| {
            document
                .as_ref()
                .and_then(|doc| doc.get(field))
                .and_then(|value| value.as_str())
                .filter(|text| !text.is_empty())
                .map(str::to_owned)
        };
        let tenant_from_key = key
            .and_then(|key| std::str::from_utf8(key).ok())
            .and_then(|key| key.split_once('|'))
            .map(|(tenant, _)| tenant.to_owned())
            .filter(|tenant| !tenant.is_empty());
        Self {
            tenant_id: text("tenantId").or(tenant_from_key),
            event_id: text("eventId").and_then(|id| Uuid::parse_str(&id).ok()),
            event_type: text("type"),
            source: text("source"),
            stream_key: text("streamKey"),
            idempotency_key,
        }
    }
}

/// Why a record went to the dead-letter branch. Codes are stable: they are stored and queried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// The record has no value, or the value is not JSON.
    Undecodable,
    /// JSON, but not a valid envelope.
    InvalidEnvelope,
    /// A valid envelope that PostgreSQL refused to store (e.g. a number beyond `numeric`).
    DatabaseRejected,
    /// An event id seen before with a different payload.
    DuplicateEventIdConflict,
    /// An idempotency key seen before (same tenant) with a different payload.
    IdempotencyKeyConflict,
    /// The payload breaks the JSON Schema registered for its type.
    SchemaViolation,
    /// No schema is registered for the type and the policy is to dead-letter.
    UnknownEventType,
}

impl DeadLetterReason {
    /// Every reason, for label sets fixed in advance.
    pub const ALL: [DeadLetterReason; 7] = [
        Self::Undecodable,
        Self::InvalidEnvelope,
        Self::DatabaseRejected,
        Self::DuplicateEventIdConflict,
        Self::IdempotencyKeyConflict,
        Self::SchemaViolation,
        Self::UnknownEventType,
    ];

    /// The stable code stored in `dead_letter.reason_code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::InvalidEnvelope => "invalid_envelope",
            Self::DatabaseRejected => "database_rejected",
            Self::DuplicateEventIdConflict => "duplicate_event_id_conflict",
            Self::IdempotencyKeyConflict => "idempotency_key_conflict",
            Self::SchemaViolation => "schema_violation",
            Self::UnknownEventType => "unknown_event_type",
        }
    }
}

/// A poison record, with the reason and the untouched original bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Why it is poison.
    pub reason: DeadLetterReason,
    /// A human-readable explanation.
    pub message: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The original record key.
    pub key: Option<Vec<u8>>,
    /// The original record value, byte for byte (empty when the record had none).
    pub original: Vec<u8>,
    /// Trace id, when the record carried one.
    pub trace_id: Option<String>,
    /// The trace position the record carried, the parent of the dead-letter span.
    pub trace_parent: Option<crate::trace_context::TraceContext>,
    /// When the gateway received it, when known.
    pub received_utc: Option<DateTime<Utc>>,
    /// Tenant and event, as far as known.
    pub identity: EventIdentity,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salvage_reads_the_envelope_fields_then_the_key() {
        let value = br#"{"tenantId":"acme","eventId":"0b8e5f8e-2f4a-4c3e-9b1a-1d2c3e4f5a6b","type":"order.created","streamKey":7}"#;
        let identity = EventIdentity::salvage(Some(value), Some(b"other|s"), None);
        assert_eq!(identity.tenant_id.as_deref(), Some("acme"));
        assert_eq!(identity.event_type.as_deref(), Some("order.created"));
        assert!(identity.event_id.is_some());
        assert_eq!(identity.stream_key, None, "a number is not a stream key");
        let broken = EventIdentity::salvage(
            Some(b"{not json"),
            Some(b"globex|orders-1"),
            Some("k".into()),
        );
        assert_eq!(broken.tenant_id.as_deref(), Some("globex"));
        assert_eq!(broken.idempotency_key.as_deref(), Some("k"));
        assert_eq!(
            EventIdentity::salvage(None, None, None),
            EventIdentity::default()
        );
    }
}
