SELECT "stream_key", "last_type" FROM "stream_state" ORDER BY "stream_key"
