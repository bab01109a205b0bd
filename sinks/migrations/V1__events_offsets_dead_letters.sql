-- Events as the dataflow stores them, one row per accepted event id.
CREATE TABLE events (
    id               uuid PRIMARY KEY,
    tenant_id        text        NOT NULL,
    source           text        NOT NULL,
    type             text        NOT NULL,
    stream_key       text        NOT NULL,
    timestamp_utc    timestamptz NOT NULL,
    schema_version   integer     NOT NULL,
    payload_jsonb    jsonb       NOT NULL,
    received_utc     timestamptz NOT NULL,
    processed_utc    timestamptz NOT NULL,
    trace_id         text,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL
);
CREATE INDEX events_tenant_stream_time ON events (tenant_id, stream_key, timestamp_utc DESC);
CREATE INDEX events_tenant_type_time   ON events (tenant_id, type, timestamp_utc DESC);
CREATE INDEX events_tenant_source_time ON events (tenant_id, source, timestamp_utc DESC);
CREATE INDEX events_tenant_time        ON events (tenant_id, timestamp_utc DESC);

-- Where each partition of each consumed topic resumes: written in the same transaction as the
-- effects of the records before it. Kafka's own committed offsets are never consulted.
CREATE TABLE source_offsets (
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_utc timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Poison records with their reason and the original bytes, exactly as consumed.
CREATE TABLE dead_letter (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reason_code       text        NOT NULL,
    message           text        NOT NULL,
    source_topic      text        NOT NULL,
    source_partition  integer     NOT NULL,
    source_offset     bigint      NOT NULL,
    record_key        bytea,
    original          bytea       NOT NULL,
    trace_id          text,
    received_utc      timestamptz,
    dead_lettered_utc timestamptz NOT NULL DEFAULT now(),
    attempt_count     integer     NOT NULL DEFAULT 1,
    UNIQUE (source_topic, source_partition, source_offset)
);
CREATE INDEX dead_letter_reason_time ON dead_letter (reason_code, dead_lettered_utc DESC);
