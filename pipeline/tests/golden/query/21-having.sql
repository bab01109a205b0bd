SELECT stream_key, count(*) AS n FROM events GROUP BY stream_key HAVING count(*) > 1 ORDER BY stream_key
