SELECT sum(ingestion_good) AS good, sum(ingestion_total) AS total FROM slo_samples
