SELECT window_start_utc, ingestion_good::float8 / ingestion_total AS availability, freshness_good, freshness_total FROM slo_samples ORDER BY window_start_utc
