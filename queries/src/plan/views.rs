//! The views a query may read: each one a SQL definition over the base tables, `$1` the tenant.

/// One view of the query endpoint: a name, its columns, and the SQL that computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewDef {
    /// The name a query reads it by, e.g. `events`.
    pub name: &'static str,
    /// Its output columns, in the order of `definition`'s select list (names as after `AS`).
    pub columns: &'static [&'static str],
    /// Whether its rows belong to one tenant: the definition then filters on `tenant_id = $1`.
    /// Global views (pipeline and SLO health) hold no tenant data and have no parameter.
    pub tenant_scoped: bool,
    /// The `SELECT` over the base PostgreSQL tables that the planner puts in place of the name.
    pub definition: &'static str,
    /// One line for the API documentation.
    pub description: &'static str,
}

impl ViewDef {
    /// The view called `name` (exactly: callers normalise identifiers first).
    pub fn find(name: &str) -> Option<&'static ViewDef> {
        VIEWS.iter().find(|view| view.name == name)
    }
}

/// Every view a query may read, in the order the API documents them.
pub const VIEWS: &[ViewDef] = &[
    ViewDef {
        name: "events",
        columns: &[
            "id",
            "tenant_id",
            "source",
            "type",
            "stream_key",
            "timestamp_utc",
            "schema_version",
            "payload",
            "received_utc",
            "processed_utc",
            "trace_id",
            "idempotency_key",
            "source_partition",
            "source_offset",
        ],
        tenant_scoped: true,
        definition: "SELECT id, tenant_id, source, type, stream_key, timestamp_utc, schema_version, \
                     payload_jsonb AS payload, received_utc, processed_utc, trace_id, \
                     idempotency_key, source_partition, source_offset \
                     FROM events WHERE tenant_id = $1",
        description: "Every accepted event of the tenant, with its JSON payload and where it came from.",
    },
    ViewDef {
        name: "stream_state",
        columns: &[
            "tenant_id",
            "stream_key",
            "last_seen_utc",
            "last_type",
            "last_payload",
            "last_event_id",
            "event_count",
            "updated_utc",
        ],
        tenant_scoped: true,
        definition: "SELECT tenant_id, stream_key, last_seen_utc, last_type, \
                     last_payload_jsonb AS last_payload, last_event_id, event_count, updated_utc \
                     FROM stream_state WHERE tenant_id = $1",
        description: "The latest state of each of the tenant's streams: last event, its payload, and the count.",
    },
    ViewDef {
        name: "slo_samples",
        columns: &[
            "window_start_utc",
            "ingestion_good",
            "ingestion_total",
            "freshness_good",
            "freshness_total",
            "updated_utc",
        ],
        tenant_scoped: false,
        definition: "SELECT window_start_utc, ingestion_good, ingestion_total, freshness_good, \
                     freshness_total, updated_utc FROM slo_samples",
        description: "Per-window good and total counts of both SLOs (ingestion availability, freshness); global.",
    },
    ViewDef {
        name: "dead_letter",
        columns: &[
            "id",
            "tenant_id",
            "reason",
            "message",
            "event_id",
            "type",
            "source",
            "stream_key",
            "received_utc",
            "dead_lettered_utc",
            "trace_id",
            "replay_status",
            "replay_count",
            "last_replayed_utc",
        ],
        tenant_scoped: true,
        definition: "SELECT id, tenant_id, reason_code AS reason, message, event_id, \
                     event_type AS type, source, stream_key, received_utc, dead_lettered_utc, \
                     trace_id, replay_status, replay_count, last_replayed_utc \
                     FROM dead_letter WHERE tenant_id = $1",
        description: "The tenant's dead letters: why each was refused, and its replay status.",
    },
    ViewDef {
        name: "pipeline_health",
        columns: &[
            "topic",
            "partition",
            "next_offset",
            "high_watermark",
            "lag_records",
            "lag_seconds",
            "events_per_second",
            "dlq_total",
            "error_rate",
            "updated_utc",
        ],
        tenant_scoped: false,
        definition: "SELECT topic, partition, next_offset, high_watermark, lag_records, \
                     lag_seconds, events_per_second, dlq_total, error_rate, updated_utc \
                     FROM pipeline_health",
        description: "Per Kafka partition: consumer lag, throughput and error rate of the pipeline; global.",
    },
    ViewDef {
        name: "dlq_reasons",
        columns: &["reason", "dead_letters", "first_seen_utc", "last_seen_utc"],
        tenant_scoped: true,
        definition: "SELECT reason_code AS reason, count(*) AS dead_letters, \
                     min(dead_lettered_utc) AS first_seen_utc, \
                     max(dead_lettered_utc) AS last_seen_utc \
                     FROM dead_letter WHERE tenant_id = $1 GROUP BY reason_code",
        description: "The tenant's dead letters per reason: how many, first and last seen.",
    },
];
