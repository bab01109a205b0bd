SELECT stream_key, last_type, last_payload->>'amount' AS amount, event_count, last_seen_utc FROM stream_state ORDER BY stream_key
