SELECT reason, type, stream_key, message FROM dead_letter ORDER BY dead_lettered_utc
