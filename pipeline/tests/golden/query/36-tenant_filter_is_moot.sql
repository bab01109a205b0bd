SELECT count(*) AS n FROM events WHERE tenant_id = 'globex' OR 1 = 1
