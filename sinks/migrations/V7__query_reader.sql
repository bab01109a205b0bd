-- The query endpoint's second wall. Its statements run as sentinel_reader (SET LOCAL ROLE), which
-- may read only the tables behind the views, and only the rows of the tenant in the transaction
-- setting sentinel.tenant_id (row-level security). The planner's binding is the first wall.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sentinel_reader') THEN
        CREATE ROLE sentinel_reader NOLOGIN;
    END IF;
EXCEPTION
    -- Another database of the same server created it at the same moment.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
GRANT sentinel_reader TO CURRENT_USER;
GRANT USAGE ON SCHEMA public TO sentinel_reader;
GRANT SELECT ON events, stream_state, slo_samples, dead_letter, pipeline_health TO sentinel_reader;

ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE stream_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE dead_letter ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON events FOR SELECT TO sentinel_reader
    USING (tenant_id = current_setting('sentinel.tenant_id', true));
CREATE POLICY tenant_rows ON stream_state FOR SELECT TO sentinel_reader
    USING (tenant_id = current_setting('sentinel.tenant_id', true));
CREATE POLICY tenant_rows ON dead_letter FOR SELECT TO sentinel_reader
    USING (tenant_id = current_setting('sentinel.tenant_id', true));
