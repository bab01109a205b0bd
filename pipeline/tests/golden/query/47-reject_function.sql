SELECT pg_sleep(10) FROM events
