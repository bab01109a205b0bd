SELECT id, CASE WHEN schema_version > 1 THEN 'new' ELSE 'old' END AS generation FROM events WHERE source = 'checkout' ORDER BY id
