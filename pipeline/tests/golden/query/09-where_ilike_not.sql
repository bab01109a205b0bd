SELECT id FROM events WHERE source ILIKE 'CHECK%' AND NOT (type = 'order.paid') ORDER BY id
