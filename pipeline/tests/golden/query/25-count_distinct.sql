SELECT count(DISTINCT stream_key) AS streams, count(*) FILTER (WHERE type LIKE 'order.%') AS orders FROM events
