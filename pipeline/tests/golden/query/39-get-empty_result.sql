SELECT id FROM events WHERE type = 'nothing.here'
