-- Idempotency claims of the gateway, scoped by tenant. A claim is in flight while its request
-- is being written to the broker (until lease_until_utc), then completed with the response to
-- replay. Rows are purged after expires_utc (retention, default 24 h).
CREATE TABLE idempotency (
    tenant_id       text        NOT NULL,
    idempotency_key text        NOT NULL,
    payload_hash    text        NOT NULL,
    event_id        uuid        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('in_flight', 'completed')),
    response        jsonb,
    claimed_utc     timestamptz NOT NULL DEFAULT now(),
    lease_until_utc timestamptz NOT NULL,
    completed_utc   timestamptz,
    expires_utc     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
);
CREATE INDEX idempotency_expires ON idempotency (expires_utc);
