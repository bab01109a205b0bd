SELECT relname FROM pg_catalog.pg_class
