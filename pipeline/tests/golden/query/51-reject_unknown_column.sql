SELECT password FROM events
