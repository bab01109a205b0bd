SELECT id FROM events WHERE idempotency_key IS NULL ORDER BY id
