-- Fixed rows for the query endpoint's golden and adversarial tests: tenant acme (the caller)
-- and tenant globex, whose rows must never come back. Every globex text carries GLOBEX-SECRET.
INSERT INTO events (id, tenant_id, source, type, stream_key, timestamp_utc, schema_version,
    payload_jsonb, received_utc, processed_utc, trace_id, source_partition, source_offset,
    payload_hash, idempotency_key) VALUES
 ('00000000-0000-4000-8000-000000000001', 'acme', 'checkout', 'order.created', 'order-1', '2026-01-01T10:00:00Z', 1,
  '{"orderId": "A-1", "amount": 10.5, "items": ["x", "y"], "customer": {"tier": "gold"}}', '2026-01-01T10:00:01Z', '2026-01-01T10:00:01.100Z', '0af7651916cd43dd8448eb211c80319c', 0, 0, 'h1', 'k1'),
 ('00000000-0000-4000-8000-000000000002', 'acme', 'checkout', 'order.paid', 'order-1', '2026-01-01T10:05:00Z', 1,
  '{"orderId": "A-1", "amount": 10.5, "method": "card"}', '2026-01-01T10:05:01Z', '2026-01-01T10:05:01.250Z', NULL, 0, 1, 'h2', 'k2'),
 ('00000000-0000-4000-8000-000000000003', 'acme', 'checkout', 'order.created', 'order-2', '2026-01-01T10:20:00Z', 2,
  '{"orderId": "A-2", "amount": 99, "items": ["z"], "customer": {"tier": "silver"}}', '2026-01-01T10:20:02Z', '2026-01-01T10:20:02.050Z', NULL, 1, 0, 'h3', NULL),
 ('00000000-0000-4000-8000-000000000004', 'acme', 'billing', 'invoice.issued', 'invoice-7', '2026-01-01T11:00:00Z', 1,
  '{"invoiceId": "I-7", "amount": 250, "note": "first, \"quoted\""}', '2026-01-01T11:00:00.500Z', '2026-01-01T11:00:03.500Z', NULL, 1, 1, 'h4', 'k4'),
 ('00000000-0000-4000-8000-000000000005', 'acme', 'checkout', 'order.created', 'order-3', '2026-01-01T11:40:00Z', 1,
  '{"orderId": "A-3", "amount": 5, "items": [], "customer": {"tier": "gold"}}', '2026-01-01T11:40:00Z', '2026-01-01T11:40:00.400Z', NULL, 0, 2, 'h5', NULL),
 ('00000000-0000-4000-8000-000000000006', 'acme', 'billing', 'invoice.paid', 'invoice-7', '2026-01-02T09:00:00Z', 1,
  '{"invoiceId": "I-7", "amount": 250}', '2026-01-02T09:00:00Z', '2026-01-02T09:00:12Z', NULL, 2, 0, 'h6', 'k6'),
 ('00000000-0000-4000-8000-0000000000b1', 'globex', 'checkout', 'order.created', 'order-1', '2026-01-01T10:00:00Z', 1,
  '{"orderId": "GLOBEX-SECRET-1", "amount": 1000000}', '2026-01-01T10:00:00Z', '2026-01-01T10:00:00.100Z', NULL, 0, 3, 'g1', 'GLOBEX-SECRET-KEY'),
 ('00000000-0000-4000-8000-0000000000b2', 'globex', 'GLOBEX-SECRET-source', 'order.paid', 'GLOBEX-SECRET-stream', '2026-01-01T10:30:00Z', 1,
  '{"orderId": "GLOBEX-SECRET-2", "amount": 2000000}', '2026-01-01T10:30:00Z', '2026-01-01T10:30:00.100Z', NULL, 3, 0, 'g2', NULL);

INSERT INTO stream_state (tenant_id, stream_key, last_seen_utc, last_type, last_payload_jsonb,
    last_event_id, event_count, source_partition, last_offset, updated_utc) VALUES
 ('acme', 'order-1', '2026-01-01T10:05:00Z', 'order.paid', '{"orderId": "A-1", "amount": 10.5, "method": "card"}',
  '00000000-0000-4000-8000-000000000002', 2, 0, 1, '2026-01-01T10:05:01.250Z'),
 ('acme', 'invoice-7', '2026-01-02T09:00:00Z', 'invoice.paid', '{"invoiceId": "I-7", "amount": 250}',
  '00000000-0000-4000-8000-000000000006', 2, 2, 0, '2026-01-02T09:00:12Z'),
 ('globex', 'GLOBEX-SECRET-stream', '2026-01-01T10:30:00Z', 'order.paid', '{"orderId": "GLOBEX-SECRET-2"}',
  '00000000-0000-4000-8000-0000000000b2', 1, 3, 0, '2026-01-01T10:30:00.100Z');

INSERT INTO dead_letter (reason_code, message, source_topic, source_partition, source_offset,
    record_key, original, trace_id, received_utc, dead_lettered_utc, tenant_id, event_id,
    event_type, source, stream_key) VALUES
 ('schema_violation', '/payload/amount: "ten" is not of type "number"', 'events.raw.v1', 0, 10, 'acme|order-9',
  '{"tenantId":"acme"}', NULL, '2026-01-01T12:00:00Z', '2026-01-01T12:00:00.200Z', 'acme',
  '00000000-0000-4000-8000-0000000000d1', 'order.created', 'checkout', 'order-9'),
 ('schema_violation', '/payload: "orderId" is a required property', 'events.raw.v1', 1, 10, 'acme|order-8',
  '{"tenantId":"acme"}', NULL, '2026-01-01T12:10:00Z', '2026-01-01T12:10:00.200Z', 'acme',
  '00000000-0000-4000-8000-0000000000d2', 'order.created', 'checkout', 'order-8'),
 ('unknown_event_type', 'no schema is registered for type "refund.requested" version 1', 'events.raw.v1', 2, 10, 'acme|refund-1',
  '{"tenantId":"acme"}', NULL, '2026-01-01T13:00:00Z', '2026-01-01T13:00:00.200Z', 'acme',
  '00000000-0000-4000-8000-0000000000d3', 'refund.requested', 'billing', 'refund-1'),
 ('schema_violation', 'GLOBEX-SECRET dead letter', 'events.raw.v1', 3, 10, 'globex|GLOBEX-SECRET',
  '{"tenantId":"globex"}', NULL, '2026-01-01T12:00:00Z', '2026-01-01T12:00:00.200Z', 'globex',
  '00000000-0000-4000-8000-0000000000d4', 'order.created', 'GLOBEX-SECRET-source', 'GLOBEX-SECRET-stream');

INSERT INTO slo_samples (window_start_utc, ingestion_good, ingestion_total, freshness_good,
    freshness_total, updated_utc) VALUES
 ('2026-01-01T10:00:00Z', 100, 100, 98, 100, '2026-01-01T10:01:05Z'),
 ('2026-01-01T10:01:00Z', 199, 200, 200, 200, '2026-01-01T10:02:05Z'),
 ('2026-01-01T10:02:00Z', 50, 52, 45, 50, '2026-01-01T10:03:05Z');

INSERT INTO pipeline_health (topic, partition, next_offset, high_watermark, lag_records,
    lag_seconds, events_per_second, dlq_total, error_rate, updated_utc) VALUES
 ('events.raw.v1', 0, 11, 11, 0, 0, 12.5, 1, 0.01, '2026-01-01T13:00:00Z'),
 ('events.raw.v1', 1, 11, 15, 4, 2.5, 40, 1, 0.025, '2026-01-01T13:00:00Z');
