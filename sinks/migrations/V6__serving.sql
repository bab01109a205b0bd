-- What serving needs. Dead letters carry the tenant and identity of their event (who may see
-- and replay them) and the outcome of their last replay; the live feed resumes events by
-- (tenant, partition, offset); pipeline_health is the dataflow's per-partition view of itself.
ALTER TABLE dead_letter ADD COLUMN tenant_id text;
ALTER TABLE dead_letter ADD COLUMN event_id uuid;
ALTER TABLE dead_letter ADD COLUMN event_type text;
ALTER TABLE dead_letter ADD COLUMN source text;
ALTER TABLE dead_letter ADD COLUMN stream_key text;
ALTER TABLE dead_letter ADD COLUMN idempotency_key text;
ALTER TABLE dead_letter ADD COLUMN replay_status text
    CHECK (replay_status IN ('replayed', 'still_invalid', 'failed'));
ALTER TABLE dead_letter ADD COLUMN replay_count integer NOT NULL DEFAULT 0;
ALTER TABLE dead_letter ADD COLUMN last_replayed_utc timestamptz;
ALTER TABLE dead_letter ADD COLUMN replay_detail text;
CREATE INDEX dead_letter_tenant_time ON dead_letter (tenant_id, dead_lettered_utc DESC, id DESC);
CREATE INDEX dead_letter_tenant_position ON dead_letter (tenant_id, source_partition, source_offset);
CREATE INDEX events_tenant_position ON events (tenant_id, source_partition, source_offset);
CREATE INDEX events_position ON events (source_partition, source_offset);

CREATE TABLE pipeline_health (
    topic             text             NOT NULL,
    partition         integer          NOT NULL,
    next_offset       bigint           NOT NULL,
    high_watermark    bigint,
    lag_records       bigint,
    lag_seconds       double precision,
    events_per_second double precision NOT NULL DEFAULT 0,
    dlq_total         bigint           NOT NULL DEFAULT 0,
    error_rate        double precision NOT NULL DEFAULT 0,
    updated_utc       timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
