-- The id of the gateway's receive span of each sampled event: with trace_id, the parent under
-- which later hops (the live feed's broadcast) record their spans in the event's trace.
ALTER TABLE events ADD COLUMN trace_span_id text;
