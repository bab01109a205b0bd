SELECT partition, lag_records, lag_seconds, events_per_second, dlq_total, error_rate FROM pipeline_health ORDER BY partition
