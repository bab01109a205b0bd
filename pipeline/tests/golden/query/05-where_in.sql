SELECT id, type FROM events WHERE type IN ('order.paid', 'invoice.paid') ORDER BY id
