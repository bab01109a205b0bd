SELECT count(*) AS n FROM events WHERE type NOT IN ('order.created')
