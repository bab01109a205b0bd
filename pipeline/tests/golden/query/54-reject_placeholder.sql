SELECT id FROM events WHERE tenant_id = $1
