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
            received_utc: Some(self.received_utc),
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
    /// When the gateway received it, when known.
    pub received_utc: Option<DateTime<Utc>>,
}
