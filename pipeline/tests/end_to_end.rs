//! End to end on the real broker and PostgreSQL: 1,000 events over 20 streams and 3 tenants go
//! through `sentinel up` and arrive exactly once with the right fields.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use futures::stream::{self, StreamExt};
use support::{envelope, ingest_token, post_event, TestEnv};
use uuid::Uuid;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const STREAMS: usize = 20;
const EVENTS: usize = 1_000;

struct Sent {
    body: serde_json::Value,
    received_at: DateTime<Utc>,
    trace_id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_events_over_twenty_streams_and_three_tenants_arrive_exactly_once() {
    let env = TestEnv::new("e2e").await;
    let sentinel = env.start("up", "up").await;
    let client = reqwest::Client::new();
    let base_url = sentinel.base_url.clone();

    let bodies: Vec<serde_json::Value> = (0..EVENTS)
        .map(|seq| {
            let tenant = TENANTS[seq % TENANTS.len()];
            let stream = format!("stream-{}", seq % STREAMS);
            // Mixed offsets: the stored timestamp must be the same instant in UTC.
            let timestamp = format!(
                "2025-06-15T{:02}:{:02}:00.5+0{}:00",
                seq % 24,
                seq % 60,
                seq % 3
            );
            envelope(Uuid::new_v4(), tenant, &stream, seq, &timestamp)
        })
        .collect();

    let sent: Vec<Sent> = stream::iter(bodies)
        .map(|body| {
            let client = client.clone();
            let base_url = base_url.clone();
            async move {
                let tenant = body["tenantId"].as_str().unwrap();
                let key = format!("key-{}", body["eventId"].as_str().unwrap());
                let response =
                    post_event(&client, &base_url, &ingest_token(tenant), &key, &body).await;
                assert_eq!(response.status(), 202, "event was not accepted");
                let accepted: serde_json::Value = response.json().await.expect("202 body");
                assert_eq!(
                    accepted["eventId"], body["eventId"],
                    "202 echoes the eventId"
                );
                let trace_id = accepted["traceId"].as_str().expect("traceId").to_owned();
                assert!(
                    trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
                    "traceId {trace_id:?} is not 32 hex digits"
                );
                let received_at = DateTime::parse_from_rfc3339(
                    accepted["receivedAtUtc"].as_str().expect("receivedAtUtc"),
                )
                .expect("receivedAtUtc is RFC 3339")
                .with_timezone(&Utc);
                Sent {
                    body,
                    received_at,
                    trace_id,
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(sent.len(), EVENTS);

    let arrived = env
        .wait_for_events(EVENTS as i64, Duration::from_secs(60))
        .await;
    assert_eq!(
        arrived,
        EVENTS as i64,
        "expected exactly {EVENTS} rows in events; sentinel log:\n{}",
        sentinel.log()
    );
    // Nothing more trickles in afterwards.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let db = env.db().await;
    assert_eq!(
        env.event_count(&db).await,
        EVENTS as i64,
        "extra rows arrived"
    );

    let rows = db
        .query(
            "SELECT id, tenant_id, source, type, stream_key, timestamp_utc, schema_version, \
             payload_jsonb, received_utc, processed_utc, trace_id, source_partition FROM events",
            &[],
        )
        .await
        .expect("reading events");
    let by_id: BTreeMap<Uuid, &Sent> = sent
        .iter()
        .map(|s| (s.body["eventId"].as_str().unwrap().parse().unwrap(), s))
        .collect();
    let mut partitions_of_stream: BTreeMap<(String, String), BTreeSet<i32>> = BTreeMap::new();
    for row in &rows {
        let id: Uuid = row.get("id");
        let sent = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("row {id} was never sent"));
        let body = &sent.body;
        let tenant: String = row.get("tenant_id");
        let stream: String = row.get("stream_key");
        assert_eq!(tenant, body["tenantId"], "tenant_id of {id}");
        assert_eq!(
            row.get::<_, String>("source"),
            body["source"],
            "source of {id}"
        );
        assert_eq!(row.get::<_, String>("type"), body["type"], "type of {id}");
        assert_eq!(stream, body["streamKey"], "stream_key of {id}");
        assert_eq!(
            row.get::<_, i32>("schema_version") as u64,
            body["schemaVersion"].as_u64().unwrap(),
            "schema_version of {id}"
        );
        let expected_time: DateTime<FixedOffset> =
            DateTime::parse_from_rfc3339(body["timestampUtc"].as_str().unwrap()).unwrap();
        assert_eq!(
            row.get::<_, DateTime<Utc>>("timestamp_utc"),
            expected_time.with_timezone(&Utc),
            "timestamp_utc of {id}"
        );
        assert_eq!(
            row.get::<_, serde_json::Value>("payload_jsonb"),
            body["payload"],
            "payload of {id}"
        );
        let received: DateTime<Utc> = row.get("received_utc");
        let processed: DateTime<Utc> = row.get("processed_utc");
        assert_eq!(
            received, sent.received_at,
            "received_utc of {id} is the 202's receivedAtUtc"
        );
        assert!(
            processed >= received,
            "processed_utc {processed} is before received_utc {received} for {id}"
        );
        assert_eq!(
            row.get::<_, Option<String>>("trace_id").as_deref(),
            Some(sent.trace_id.as_str()),
            "trace_id of {id} is the 202's traceId"
        );
        partitions_of_stream
            .entry((tenant, stream))
            .or_default()
            .insert(row.get("source_partition"));
    }
    assert_eq!(
        partitions_of_stream.len(),
        TENANTS.len() * STREAMS.min(EVENTS) / gcd(TENANTS.len(), STREAMS),
        "every (tenant, stream) pair that was sent is stored"
    );
    for (stream, partitions) in &partitions_of_stream {
        assert_eq!(
            partitions.len(),
            1,
            "stream {stream:?} spread over partitions {partitions:?}: the key is not tenantId|streamKey"
        );
    }

    let offsets = db
        .query_one(
            "SELECT coalesce(sum(next_offset), 0)::bigint, count(*) FROM source_offsets \
             WHERE topic = $1",
            &[&format!("{}events.raw.v1", env.topic_prefix)],
        )
        .await
        .expect("reading source offsets");
    let (consumed, partitions): (i64, i64) = (offsets.get(0), offsets.get(1));
    assert_eq!(
        consumed, EVENTS as i64,
        "stored offsets cover exactly the records produced"
    );
    assert_eq!(
        partitions, 2,
        "the raw topic Sentinel created has one partition per worker (SENTINEL_WORKERS=2)"
    );

    // stream_state agrees with a recomputation over the stored events.
    let (mismatches, streams) = env.stream_state_check(&db).await;
    assert_eq!(
        streams,
        partitions_of_stream.len() as i64,
        "one stream_state row per stream"
    );
    assert_eq!(
        mismatches, 0,
        "stream_state rows differ from a recomputation"
    );

    // The SLO windows hold every answer (all good) and every event's freshness.
    assert_eq!(
        env.slo_totals(EVENTS as i64).await,
        (EVENTS as i64, EVENTS as i64, EVENTS as i64, EVENTS as i64),
        "slo_samples: (ingestion good, total, freshness good, total)"
    );

    // GET /v1/slo reports the same counts, for a token with the read role only.
    let slo_url = format!("{}/v1/slo", sentinel.base_url);
    assert_eq!(client.get(&slo_url).send().await.unwrap().status(), 401);
    let forbidden = client
        .get(&slo_url)
        .bearer_auth(ingest_token("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        forbidden.status(),
        403,
        "the ingest role does not read SLOs"
    );
    let slo: serde_json::Value = client
        .get(&slo_url)
        .bearer_auth(support::token("acme", &[ingress::Role::Read]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ingestion = &slo["objectives"][0];
    assert_eq!(ingestion["name"], "ingestion_availability", "{slo}");
    assert_eq!(ingestion["total"], EVENTS as i64, "{slo}");
    assert_eq!(ingestion["compliance"], 1.0, "{slo}");
    assert_eq!(ingestion["errorBudgetRemaining"], 1.0, "{slo}");
    assert_eq!(ingestion["burnRates"]["5m"], 0.0, "{slo}");
    assert_eq!(slo["objectives"][1]["name"], "freshness");
    assert_eq!(slo["objectives"][1]["total"], EVENTS as i64, "{slo}");

    // The metrics tell the same story, and claims were group-committed.
    let accepted = sentinel
        .metric(r#"gateway_requests_total{status="202"}"#)
        .await;
    assert_eq!(
        accepted, EVENTS as f64,
        "gateway_requests_total{{status=202}}"
    );
    let stored = sentinel
        .metric(r#"processor_events_total{result="success"}"#)
        .await;
    assert_eq!(
        stored, EVENTS as f64,
        "processor_events_total{{result=success}}"
    );
    let fresh = sentinel
        .metric_total("end_to_end_freshness_seconds_count")
        .await;
    assert_eq!(fresh, EVENTS as f64, "one freshness sample per event");
    // envelope() alternates order.created and order.paid.
    for event_type in ["order.created", "order.paid"] {
        let sample = format!(r#"processor_stored_events_total{{event_type="{event_type}"}}"#);
        assert_eq!(
            sentinel.metric(&sample).await,
            (EVENTS / 2) as f64,
            "{sample}"
        );
    }
    let claims = sentinel
        .metric(r#"idempotency_operations_total{kind="claim"}"#)
        .await;
    let statements = sentinel
        .metric(r#"idempotency_statements_total{kind="claim"}"#)
        .await;
    assert_eq!(claims, EVENTS as f64);
    assert!(
        statements < claims,
        "claims were not group-committed: {statements} statements for {claims} claims"
    );

    // Each of Sentinel's connections says in pg_stat_activity what it is for.
    let applications: BTreeSet<String> = db
        .query(
            "SELECT DISTINCT application_name FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("reading pg_stat_activity")
        .iter()
        .map(|row| row.get(0))
        .collect();
    for expected in ["sentinel-claims", "sentinel-writer", "sentinel-feed"] {
        assert!(
            applications.contains(expected),
            "no connection named {expected}: {applications:?}"
        );
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
