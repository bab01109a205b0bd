SELECT sum((payload->>'amount')::numeric) AS total FROM events WHERE source = 'checkout'
