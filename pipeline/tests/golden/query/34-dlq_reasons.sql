SELECT reason, dead_letters, first_seen_utc, last_seen_utc FROM dlq_reasons ORDER BY reason
