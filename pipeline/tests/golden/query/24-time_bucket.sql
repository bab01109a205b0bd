SELECT time_bucket(INTERVAL '30 minutes', timestamp_utc) AS bucket, count(*) AS n FROM events WHERE timestamp_utc < '2026-01-02' GROUP BY bucket ORDER BY bucket
