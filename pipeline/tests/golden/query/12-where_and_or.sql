SELECT id FROM events WHERE (type = 'order.created' AND stream_key = 'order-2') OR type = 'invoice.paid' ORDER BY id
