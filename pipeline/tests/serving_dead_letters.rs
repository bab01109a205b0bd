//! The dead-letter API on the real broker and PostgreSQL: list with filters and paging, the full
//! snapshot, tenant scoping, and a replay that — once a schema change fixes the dead letters —
//! brings them into `events` exactly once, even when replayed twice; `dryRun` changes nothing.

mod support;

use std::time::{Duration, Instant};

use ingress::Role;
use support::{envelope, ingest_token, post_event, token, SentinelProcess, TestEnv};
use uuid::Uuid;

fn schema(required: &str) -> String {
    serde_json::json!({
        "x-sentinel-tenant": "*",
        "x-sentinel-type": "order.created",
        "x-sentinel-schema-version": 1,
        "type": "object",
        "required": [required],
    })
    .to_string()
}

async fn get_json(client: &reqwest::Client, url: &str, token: &str) -> (u16, serde_json::Value) {
    let response = client.get(url).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn replay(
    client: &reqwest::Client,
    base_url: &str,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = client
        .post(format!("{base_url}/v1/dead-letters/replay"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// `sentinel up` on `env` (with `extra` settings) whose schema of `order.created` requires the
/// payload field `required`, reloaded every second from a directory of the test's own, which
/// it returns so that the test can change the schema.
async fn start_requiring(
    env: &TestEnv,
    required: &str,
    extra: &[(&str, &str)],
) -> (SentinelProcess, std::path::PathBuf) {
    let dir = env.log_dir.join("schemas");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("order.json"), schema(required)).unwrap();
    let dir_text = dir.display().to_string();
    let mut settings = vec![
        ("SENTINEL_SCHEMA_DIR", dir_text.as_str()),
        ("SENTINEL_SCHEMA_RELOAD_SECONDS", "1"),
    ];
    settings.extend_from_slice(extra);
    let sentinel = env.start_with("up", "up", &settings).await;
    (sentinel, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_dead_letter_replays_into_events_exactly_once() {
    let env = TestEnv::new("dead_letters").await;
    let (sentinel, dir) =
        start_requiring(&env, "mustHave", &[("SENTINEL_HEALTH_INTERVAL_MS", "300")]).await;
    let base = sentinel.base_url.clone();
    let client = reqwest::Client::new();

    // Three acme order.created events and one of globex break the schema (no mustHave).
    // envelope(): even seq → order.created; schemaVersion 1 + seq % 3, so seq 0, 6, 12 are v1.
    let mut sent = Vec::new();
    for (tenant, seq) in [("acme", 0), ("acme", 6), ("acme", 12), ("globex", 0)] {
        let body = envelope(
            Uuid::new_v4(),
            tenant,
            "orders-1",
            seq,
            "2025-06-15T10:00:00Z",
        );
        let key = format!("key-{seq}-{tenant}");
        let response = post_event(&client, &base, &ingest_token(tenant), &key, &body).await;
        assert_eq!(response.status(), 202);
        sent.push(body);
    }
    env.wait_for_consumed(4).await;
    let db = env.db().await;
    assert_eq!(env.event_count(&db).await, 0, "all four were dead-lettered");

    let reader = token("acme", &[Role::Read]);
    let admin = token("acme", &[Role::Admin]);
    // The list: filtered, newest first, paged.
    let (status, page) = get_json(
        &client,
        &format!("{base}/v1/dead-letters?reason=schema_violation&type=order.created&limit=2"),
        &reader,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items[0]["id"].as_i64() > items[1]["id"].as_i64(),
        "newest first"
    );
    assert_eq!(items[0]["reason"], "schema_violation");
    assert!(items[0]["message"].as_str().unwrap().contains("mustHave"));
    let cursor = page["nextCursor"].as_i64().expect("a next page");
    let (_, rest) = get_json(
        &client,
        &format!("{base}/v1/dead-letters?reason=schema_violation&limit=2&cursor={cursor}"),
        &reader,
    )
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["nextCursor"], serde_json::Value::Null);
    let (_, none) = get_json(
        &client,
        &format!("{base}/v1/dead-letters?reason=undecodable"),
        &reader,
    )
    .await;
    assert_eq!(none["items"].as_array().unwrap().len(), 0);
    let (status, problem) =
        get_json(&client, &format!("{base}/v1/dead-letters?limit=0"), &reader).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (400, Some("/problems/invalid-request"))
    );

    // The snapshot: the original bytes, and only for the owner.
    let oldest = rest["items"][0]["id"].as_i64().unwrap();
    let (status, snapshot) = get_json(
        &client,
        &format!("{base}/v1/dead-letters/{oldest}"),
        &reader,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        snapshot["original"], sent[0],
        "the snapshot is the event as sent"
    );
    assert_eq!(snapshot["eventId"], sent[0]["eventId"]);
    assert_eq!(snapshot["idempotencyKey"], "key-0-acme");
    assert_eq!(snapshot["recordKey"], "acme|orders-1");
    let (status, _) = get_json(
        &client,
        &format!("{base}/v1/dead-letters/{oldest}"),
        &token("globex", &[Role::Read]),
    )
    .await;
    assert_eq!(
        status, 404,
        "another tenant's dead letter does not exist for you"
    );
    let (_, globex) = get_json(
        &client,
        &format!("{base}/v1/dead-letters"),
        &token("globex", &[Role::Read]),
    )
    .await;
    assert_eq!(globex["items"].as_array().unwrap().len(), 1);

    // Replay needs the admin role and a well-formed request.
    let filter = serde_json::json!({"filter": {"reason": "schema_violation"}});
    let (status, _) = replay(&client, &base, &reader, filter.clone()).await;
    assert_eq!(status, 403);
    let (status, problem) =
        replay(&client, &base, &admin, serde_json::json!({"dryRun": true})).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (400, Some("/problems/invalid-request"))
    );

    // Before the fix, a dry run says they are still invalid.
    let (status, report) = replay(
        &client,
        &base,
        &admin,
        serde_json::json!({"filter": {"reason": "schema_violation"}, "dryRun": true}),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (report["matched"].as_u64(), report["stillInvalid"].as_u64()),
        (Some(3), Some(3))
    );

    // Fix the schema; a dry run now says all three would replay, and changes nothing.
    std::fs::write(dir.join("order.json"), schema("seq")).unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (_, report) = replay(
        &client,
        &base,
        &admin,
        serde_json::json!({"filter": {"reason": "schema_violation"}, "dryRun": true}),
    )
    .await;
    assert_eq!(report["replayed"].as_u64(), Some(3), "{report}");
    assert!(report["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["outcome"] == "would_replay"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.consumed_records(&db).await,
        4,
        "a dry run sends nothing"
    );
    let untouched: i64 = db
        .query_one(
            "SELECT count(*) FROM dead_letter WHERE replay_count > 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(untouched, 0, "a dry run records nothing");

    // Replay for real, twice.
    for round in 1..=2 {
        let (status, report) = replay(&client, &base, &admin, filter.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(
            report["replayed"].as_u64(),
            Some(3),
            "round {round}: {report}"
        );
        env.wait_for_consumed(4 + 3 * round).await;
    }
    let stored: Vec<String> = db
        .query("SELECT id::text FROM events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut expected: Vec<String> = sent[..3]
        .iter()
        .map(|b| b["eventId"].as_str().unwrap().to_owned())
        .collect();
    expected.sort();
    assert_eq!(
        stored, expected,
        "each fixed event is stored once, globex's not at all"
    );
    let count: i64 = db
        .query_one(
            "SELECT event_count FROM stream_state WHERE tenant_id = 'acme' AND stream_key = 'orders-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3, "the second replay did not count the events again");
    let identity: (String, String) = {
        let row = db
            .query_one(
                "SELECT idempotency_key, to_char(received_utc, 'YYYY-MM-DD') FROM events WHERE id = $1::text::uuid",
                &[&expected[0]],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(
        identity.0.starts_with("key-"),
        "the original idempotency key came along"
    );
    let replays: Vec<(i32, String)> = db
        .query(
            "SELECT replay_count, replay_status FROM dead_letter WHERE tenant_id = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        replays,
        vec![(2, "replayed".to_owned()); 3],
        "each dead letter records its replays"
    );
    assert!(
        sentinel
            .metric("processor_events_total{result=\"duplicate\"}")
            .await
            >= 3.0
    );

    // pipeline_health, maintained by the dataflow, agrees: 10 records consumed, 4 dead letters,
    // nothing left to read, 2 partitions (one per worker: the topic Sentinel created).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = client
            .post(format!("{base}/v1/query"))
            .bearer_auth(&reader)
            .json(
                &serde_json::json!({"sql": "SELECT sum(next_offset) AS consumed, \
                sum(dlq_total) AS dead, max(lag_records) AS lag, count(*) AS partitions \
                FROM pipeline_health"}),
            )
            .send()
            .await
            .unwrap();
        let answer: serde_json::Value = response.json().await.unwrap();
        if answer["rows"][0] == serde_json::json!([10, 4, 0, 2]) {
            break;
        }
        assert!(Instant::now() < deadline, "pipeline_health: {answer}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Several dead letters of one event (the one PostgreSQL refused and those its refused replays
/// left) are replayed by one record, so a replay that is refused again does not multiply them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_dead_letters_are_replayed_by_one_record() {
    let env = TestEnv::new("dead_letters_once").await;
    let (sentinel, dir) = start_requiring(&env, "mustHave", &[]).await;
    let base = sentinel.base_url.clone();
    let client = reqwest::Client::new();
    let body = envelope(
        Uuid::new_v4(),
        "acme",
        "orders-1",
        0,
        "2025-06-15T10:00:00Z",
    );
    let response = post_event(&client, &base, &ingest_token("acme"), "once", &body).await;
    assert_eq!(response.status(), 202);
    env.wait_for_consumed(1).await;
    // A second dead letter of the same event, as a refused replay would leave.
    let db = env.db().await;
    db.execute(
        "INSERT INTO dead_letter (source_topic, source_partition, source_offset, reason_code, \
            message, original, record_key, tenant_id, event_id, event_type, source, stream_key, \
            received_utc, dead_lettered_utc, idempotency_key, trace_id) \
         SELECT source_topic, source_partition, source_offset + 1000, reason_code, message, \
            original, record_key, tenant_id, event_id, event_type, source, stream_key, \
            received_utc, dead_lettered_utc, idempotency_key, trace_id FROM dead_letter",
        &[],
    )
    .await
    .unwrap();
    std::fs::write(dir.join("order.json"), schema("seq")).unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (status, report) = replay(
        &client,
        &base,
        &token("acme", &[Role::Admin]),
        serde_json::json!({"filter": {"reason": "schema_violation"}}),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{report}");
    assert!(
        results.iter().all(|r| r["outcome"] == "replayed"),
        "{report}"
    );
    assert_eq!(
        (&results[0]["partition"], &results[0]["offset"]),
        (&results[1]["partition"], &results[1]["offset"]),
        "one record for both: {report}"
    );
    assert_eq!(env.wait_for_events(1, Duration::from_secs(30)).await, 1);
}
