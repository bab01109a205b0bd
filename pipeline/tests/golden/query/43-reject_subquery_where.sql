SELECT id FROM events WHERE id IN (SELECT last_event_id FROM stream_state)
