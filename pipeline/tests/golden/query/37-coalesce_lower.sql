SELECT lower(type) AS t, coalesce(idempotency_key, 'none') AS key FROM events ORDER BY id LIMIT 3
