SELECT id FROM events WHERE schema_version >= 2
