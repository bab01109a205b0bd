-- What de-duplication needs to survive a restart: each event's canonical payload hash and
-- idempotency key, found by partition and receive time when a worker seeds its memory.
ALTER TABLE events ADD COLUMN payload_hash text;
ALTER TABLE events ADD COLUMN idempotency_key text;
CREATE INDEX events_partition_received ON events (source_partition, received_utc);
