SELECT DISTINCT type FROM events WHERE type LIKE 'invoice.%' ORDER BY type
