-- The 202 a claim replays is kept as typed columns: the event id was one already; the receive
-- time and the 16-byte trace id join it. A claim used to store the answer as a jsonb document,
-- parsed by PostgreSQL on every claim and carried whole in the WAL of the claim and of its
-- completion. Claims made before this migration keep their `response` and are read from it;
-- new claims leave it NULL, so one retention period after the upgrade no row holds one.
ALTER TABLE idempotency ADD COLUMN received_utc timestamptz, ADD COLUMN trace_id bytea;
