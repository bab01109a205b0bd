SELECT 'events'::regclass FROM events
