-- De-duplication seeds a starting worker's memory with the events received in its retention.
-- `events` is only appended to, in about the order events were received, so a block-range index
-- on the receive time finds that window as well as a B-tree did, and costs the writer almost
-- nothing per row (a B-tree entry per event did).
DROP INDEX IF EXISTS events_partition_received;
CREATE INDEX events_received_brin ON events USING brin (received_utc);
