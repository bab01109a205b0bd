SELECT payload->'customer'->>'tier' AS tier, count(*) AS n FROM events WHERE payload->'customer' IS NOT NULL GROUP BY tier ORDER BY tier
