SELECT * FROM idempotency
