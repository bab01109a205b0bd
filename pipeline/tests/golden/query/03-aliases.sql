SELECT e.type AS kind, e.stream_key AS stream FROM events AS e ORDER BY kind, stream
