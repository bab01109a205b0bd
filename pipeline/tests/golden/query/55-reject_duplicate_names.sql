SELECT type, type FROM events
