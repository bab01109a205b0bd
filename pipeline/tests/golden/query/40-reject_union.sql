SELECT id FROM events UNION SELECT id FROM events
