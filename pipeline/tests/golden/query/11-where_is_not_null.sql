SELECT id, trace_id FROM events WHERE trace_id IS NOT NULL
