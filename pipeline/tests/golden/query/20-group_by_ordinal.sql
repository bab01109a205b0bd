SELECT stream_key, count(*) FROM events GROUP BY 1 ORDER BY 1
