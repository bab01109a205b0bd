SELECT id, type, stream_key FROM events ORDER BY id
