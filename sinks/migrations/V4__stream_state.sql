-- Per (tenant, stream): the latest event by event time (ties by offset) and the event count,
-- maintained by the dataflow and committed with the offsets of the events that changed it.
CREATE TABLE stream_state (
    tenant_id          text        NOT NULL,
    stream_key         text        NOT NULL,
    last_seen_utc      timestamptz NOT NULL,
    last_type          text        NOT NULL,
    last_payload_jsonb jsonb       NOT NULL,
    last_event_id      uuid        NOT NULL,
    event_count        bigint      NOT NULL,
    source_partition   integer     NOT NULL,
    last_offset        bigint      NOT NULL,
    updated_utc        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, stream_key)
);
CREATE INDEX stream_state_partition ON stream_state (source_partition);
