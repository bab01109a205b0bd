SELECT date_trunc('hour', timestamp_utc) AS hour, count(*) AS n FROM events GROUP BY 1 ORDER BY 1
