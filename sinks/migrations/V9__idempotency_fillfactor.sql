-- Every claim is inserted and then updated once (completed with its response, or released).
-- Room left on each page lets that update stay on the row's page as a heap-only tuple: no new
-- entries in the primary key or the expiry index, and less WAL per event.
ALTER TABLE idempotency SET (fillfactor = 45);
