SELECT payload #>> '{customer,tier}' AS tier FROM events WHERE id = '00000000-0000-4000-8000-000000000001'
