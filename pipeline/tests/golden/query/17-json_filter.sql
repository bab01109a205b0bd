SELECT id FROM events WHERE (payload->>'amount')::numeric > 50 ORDER BY id
