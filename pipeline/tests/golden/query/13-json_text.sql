SELECT payload->>'orderId' AS order_id, payload->>'amount' AS amount FROM events WHERE type = 'order.created' ORDER BY order_id
