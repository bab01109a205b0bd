-- Gateway outcome publications already added to slo_samples. A gateway sends a publication
-- again, unchanged, when the broker's acknowledgement of it was lost, though the broker may have
-- written it: the writer records each publication's id in the transaction that adds its counts,
-- and adds the counts of an id it finds here no more. Rows are purged after seven days, long
-- after any copy of a publication could still be read.
CREATE TABLE gateway_publications (
    publication_id   uuid        PRIMARY KEY,
    window_start_utc timestamptz NOT NULL,
    recorded_utc     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gateway_publications_recorded ON gateway_publications (recorded_utc);
