-- Tumbling SLO windows (1 minute by default): gateway answers (2xx/4xx good, 5xx bad) and
-- freshness (processed - received within the threshold). Each worker adds its deltas in the
-- transaction of the records they come from, so the sums are exact.
CREATE TABLE slo_samples (
    window_start_utc timestamptz PRIMARY KEY,
    ingestion_good   bigint      NOT NULL DEFAULT 0,
    ingestion_total  bigint      NOT NULL DEFAULT 0,
    freshness_good   bigint      NOT NULL DEFAULT 0,
    freshness_total  bigint      NOT NULL DEFAULT 0,
    updated_utc      timestamptz NOT NULL DEFAULT now()
);
