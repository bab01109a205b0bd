SELECT id, row_number() OVER (ORDER BY id) FROM events
