SELECT * FROM events ORDER BY timestamp_utc LIMIT 2
