SELECT * FROM events e JOIN stream_state s ON s.stream_key = e.stream_key
