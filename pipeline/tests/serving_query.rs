//! The query endpoint on the real PostgreSQL: golden files (SQL in, rows or problem out), the
//! adversarial tenant-isolation suite, the row-level-security wall on its own, the formats, and
//! the statement timeout and row cap.
//!
//! Regenerate the golden outputs with `UPDATE_GOLDEN=1 cargo test -p pipeline --test
//! serving_query golden` — then read every changed `.out` file before committing it.

mod support;

use std::path::PathBuf;

use ingress::Role;
use support::{token, SentinelProcess, TestEnv};

const FIXTURE: &str = include_str!("golden/fixture.sql");

async fn start_with_fixture(env: &TestEnv, extra: &[(&str, &str)]) -> SentinelProcess {
    let sentinel = env.start_with("ingress", "ingress", extra).await;
    env.db()
        .await
        .batch_execute(FIXTURE)
        .await
        .expect("loading the fixture");
    sentinel
}

async fn query(
    client: &reqwest::Client,
    base_url: &str,
    sql: &str,
    accept: Option<&str>,
) -> reqwest::Response {
    let mut request = client
        .post(format!("{base_url}/v1/query"))
        .bearer_auth(token("acme", &[Role::Read]))
        .json(&serde_json::json!({ "sql": sql }));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    request.send().await.expect("POST /v1/query")
}

/// The outcome of a query as its golden file records it.
async fn outcome(response: reqwest::Response) -> serde_json::Value {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("a JSON answer");
    if status == 200 {
        let columns: Vec<serde_json::Value> = body["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| serde_json::json!([c["name"], c["type"]]))
            .collect();
        serde_json::json!({
            "status": status,
            "columns": columns,
            "rows": body["rows"],
            "truncated": body["truncated"],
        })
    } else {
        serde_json::json!({
            "status": status,
            "type": body["type"],
            "detail": body["detail"],
            "location": body["location"],
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_queries() {
    let env = TestEnv::new("query_golden").await;
    let sentinel = start_with_fixture(&env, &[]).await;
    let client = reqwest::Client::new();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/query");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 40, "at least 40 golden cases");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let sql = std::fs::read_to_string(case).unwrap();
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let response = if name.contains("-get-") {
            client
                .get(format!("{}/v1/query", sentinel.base_url))
                .query(&[("sql", sql.trim())])
                .bearer_auth(token("acme", &[Role::Read]))
                .send()
                .await
                .unwrap()
        } else {
            query(&client, &sentinel.base_url, sql.trim(), None).await
        };
        let actual = outcome(response).await;
        let expected_path = case.with_extension("out");
        if update {
            let text = serde_json::to_string_pretty(&actual).unwrap() + "\n";
            std::fs::write(&expected_path, text).unwrap();
            continue;
        }
        let expected: serde_json::Value = std::fs::read_to_string(&expected_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(serde_json::Value::Null);
        if actual != expected {
            failures.push(format!(
                "{name}:\n  sql: {}\n  expected: {expected}\n  actual:   {actual}",
                sql.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches:\n{}",
        failures.join("\n")
    );
}

/// Whatever acme sends, nothing of globex comes back: each attack is refused, or answered
/// without a trace of globex's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sql_reaches_another_tenants_rows() {
    let env = TestEnv::new("query_isolation").await;
    let sentinel = start_with_fixture(&env, &[]).await;
    let client = reqwest::Client::new();
    let attacks = [
        // Asking for it.
        "SELECT * FROM events WHERE tenant_id = 'globex'",
        "SELECT * FROM events WHERE tenant_id <> 'acme' OR 1 = 1",
        "SELECT * FROM events WHERE tenant_id = 'acme' OR tenant_id = 'globex'",
        "SELECT * FROM dead_letter WHERE tenant_id IN ('acme', 'globex')",
        "SELECT * FROM stream_state",
        "SELECT * FROM dlq_reasons",
        // Subqueries, set operations, CTEs.
        "SELECT * FROM (SELECT * FROM events) AS e",
        "SELECT id FROM events WHERE EXISTS (SELECT 1 FROM events)",
        "SELECT (SELECT max(payload::text) FROM events) FROM events",
        "SELECT id FROM events UNION ALL SELECT id FROM events",
        "SELECT payload::text FROM events UNION SELECT last_payload::text FROM stream_state",
        "WITH everything AS (SELECT * FROM events) SELECT * FROM everything",
        "WITH RECURSIVE r AS (SELECT 1) SELECT * FROM r",
        // Base tables, qualified names, system catalogs.
        "SELECT * FROM public.events",
        "SELECT * FROM \"public\".\"events\"",
        "SELECT * FROM pg_catalog.pg_class",
        "SELECT * FROM pg_stats",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM idempotency",
        "SELECT * FROM events_staging",
        "SELECT * FROM events, stream_state",
        "SELECT * FROM events e JOIN dead_letter d ON true",
        "SELECT * FROM events CROSS JOIN LATERAL jsonb_each(payload) AS j",
        "SELECT * FROM jsonb_each('{}')",
        // Comments, casing, quoting.
        "SELECT * FROM events /* */ WHERE tenant_id = 'globex' -- */ OR true",
        "SELECT * FROM events; -- harmless?\nSELECT * FROM public.events",
        "SeLeCt * FrOm EvEnTs WhErE TeNaNt_Id = 'globex'",
        "SELECT * FROM \"EVENTS\"",
        "SELECT * FROM \"events\" AS \"globex\"",
        "SELECT * FROM events AS pg_class",
        // Functions and casts.
        "SELECT set_config('sentinel.tenant_id', 'globex', true) FROM events",
        "SELECT current_setting('sentinel.tenant_id') FROM events",
        "SELECT pg_read_file('/etc/passwd') FROM events",
        "SELECT query_to_xml('select * from public.events', true, true, '') FROM events",
        "SELECT dblink('dbname=x', 'select 1') FROM events",
        "SELECT 'public.events'::regclass FROM events",
        "SELECT CAST('events' AS regclass) FROM events",
        "SELECT to_jsonb(e) FROM events e",
        "SELECT row_to_json(events) FROM events",
        "SELECT lower(tenant_id) FROM events WHERE tenant_id ILIKE '%GLOB%'",
        // Statement stacking and other statements.
        "SELECT 1 FROM events; SET ROLE postgres",
        "SELECT 1 FROM events; RESET ROLE; SELECT * FROM events",
        "RESET ROLE",
        "SET sentinel.tenant_id = 'globex'",
        "COPY events TO STDOUT",
        "DELETE FROM events",
        "UPDATE events SET tenant_id = 'acme'",
        "TABLE events",
        "VALUES (1)",
        "EXPLAIN SELECT * FROM events",
        "SELECT * FROM events FOR UPDATE",
        "SELECT * INTO stolen FROM events",
        "SELECT * FROM events WHERE tenant_id = $1",
    ];
    let secrets = [
        "GLOBEX-SECRET",
        "0000000000b1",
        "0000000000b2",
        "0000000000d4",
        "1000000",
        "2000000",
    ];
    for attack in attacks {
        let response = query(&client, &sentinel.base_url, attack, None).await;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(
            status == 200 || status == 400,
            "{attack}: answered {status}: {body}"
        );
        for secret in secrets {
            assert!(
                !body.contains(secret),
                "{attack}: the answer leaks globex ({secret}): {body}"
            );
        }
        if status == 200 {
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(answer["rows"].is_array(), "{attack}: {body}");
        }
    }
    // And acme does see its own rows through the same views.
    let response = query(
        &client,
        &sentinel.base_url,
        "SELECT count(*) AS n FROM events",
        None,
    )
    .await;
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["rows"][0][0], 6);
}

/// The second wall alone: as `sentinel_reader` with acme's setting, PostgreSQL itself returns
/// only acme's rows of the base tables, nothing without a setting, and refuses other tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_holds_without_the_planner() {
    let env = TestEnv::new("query_rls").await;
    let _sentinel = start_with_fixture(&env, &[]).await;
    let mut db = env.db().await;
    let tx = db
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .unwrap();
    tx.batch_execute("SET LOCAL ROLE sentinel_reader")
        .await
        .unwrap();
    let count = |sql: &'static str| {
        let tx = &tx;
        async move { tx.query_one(sql, &[]).await.map(|row| row.get::<_, i64>(0)) }
    };
    assert_eq!(
        count("SELECT count(*) FROM events").await.unwrap(),
        0,
        "no tenant, no rows"
    );
    tx.execute("SELECT set_config('sentinel.tenant_id', 'acme', true)", &[])
        .await
        .unwrap();
    assert_eq!(count("SELECT count(*) FROM events").await.unwrap(), 6);
    assert_eq!(count("SELECT count(*) FROM stream_state").await.unwrap(), 2);
    assert_eq!(count("SELECT count(*) FROM dead_letter").await.unwrap(), 3);
    assert_eq!(
        count("SELECT count(*) FROM events WHERE tenant_id = 'globex'")
            .await
            .unwrap(),
        0
    );
    let refused = count("SELECT count(*) FROM idempotency").await.unwrap_err();
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("42501"),
        "no privilege on other tables"
    );
    drop(tx);
    let tx = db
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .unwrap();
    tx.batch_execute("SET LOCAL ROLE sentinel_reader")
        .await
        .unwrap();
    let write = tx
        .execute("DELETE FROM events", &[])
        .await
        .expect_err("a read-only transaction as the reader cannot write");
    assert!(write.as_db_error().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_limits_and_errors() {
    let env = TestEnv::new("query_limits").await;
    let sentinel = start_with_fixture(
        &env,
        &[
            ("SENTINEL_QUERY_ROW_CAP", "4"),
            ("SENTINEL_QUERY_TIMEOUT_MS", "200"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let base = &sentinel.base_url;
    let sql =
        "SELECT id, payload->>'note' AS note FROM events WHERE source = 'billing' ORDER BY id";

    let csv = query(&client, base, sql, Some("text/csv")).await;
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    assert_eq!(
        text,
        "id,note\r\n00000000-0000-4000-8000-000000000004,\"first, \"\"quoted\"\"\"\r\n\
         00000000-0000-4000-8000-000000000006,\r\n"
    );
    let ndjson = query(&client, base, sql, Some("application/x-ndjson")).await;
    let lines: Vec<serde_json::Value> = ndjson
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["note"], "first, \"quoted\"");
    assert_eq!(lines[1]["note"], serde_json::Value::Null);
    let refused = query(&client, base, sql, Some("image/png")).await;
    assert_eq!(refused.status(), 406);
    // A result column may have any name, that of the row Sentinel wraps the query in included.
    let named_q: serde_json::Value = query(
        &client,
        base,
        "SELECT type AS q FROM events WHERE source = 'billing' ORDER BY id",
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(named_q["columns"][0]["name"], "q", "{named_q}");
    assert_eq!(
        named_q["rows"].as_array().map(Vec::len),
        Some(2),
        "{named_q}"
    );

    // Row cap: 6 rows exist, 4 come back, flagged.
    let capped: serde_json::Value = query(&client, base, "SELECT id FROM events", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(capped["rowCount"], 4);
    assert_eq!(capped["truncated"], true);

    // Statement timeout: enough rows that a sort of every payload takes longer than 200 ms.
    env.db()
        .await
        .batch_execute(
            "INSERT INTO events (id, tenant_id, source, type, stream_key, timestamp_utc, \
               schema_version, payload_jsonb, received_utc, processed_utc, source_partition, source_offset) \
             SELECT gen_random_uuid(), 'acme', 'load', 'load.test', 's' || (i % 100), now(), 1, \
               jsonb_build_object('i', i, 'pad', repeat(md5(i::text), 8)), now(), now(), 9, i \
             FROM generate_series(1, 300000) AS i",
        )
        .await
        .unwrap();
    let slow = query(
        &client,
        base,
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY length(payload::text || stream_key || lower(payload::text))) AS p FROM events",
        None,
    )
    .await;
    assert_eq!(slow.status(), 408);
    let problem: serde_json::Value = slow.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/query-timeout");

    // Malformed requests and missing roles are problems too.
    let response = client
        .post(format!("{base}/v1/query"))
        .bearer_auth(token("acme", &[Role::Read]))
        .json(&serde_json::json!({"query": "SELECT 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/invalid-request");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `query`, expected `sql`"),
        "{problem}"
    );
    let response = client
        .post(format!("{base}/v1/query"))
        .bearer_auth(token("acme", &[Role::Read]))
        .header("content-type", "text/plain")
        .body(r#"{"sql": "SELECT id FROM events"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("Content-Type"),
        "{problem}"
    );
    // GET without its sql parameter: 400 for a reader, 401 without a token.
    let url = format!("{base}/v1/query");
    let response = client
        .get(&url)
        .bearer_auth(token("acme", &[Role::Read]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    // A body over the read side's 2 MiB is refused with 413 once the client has sent it all
    // (without a token too: the body is read before anything refuses the request).
    for bearer in [Some(token("acme", &[Role::Read])), None] {
        let mut request = client
            .post(format!("{base}/v1/query"))
            .header("content-type", "application/json")
            .body(vec![b' '; 16 * 1024 * 1024]);
        if let Some(bearer) = &bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.expect("the answer, not a reset");
        let expected = if bearer.is_some() { 413 } else { 401 };
        assert_eq!(response.status(), expected);
    }
    let response = client
        .post(format!("{base}/v1/query"))
        .bearer_auth(token("acme", &[Role::Ingest]))
        .json(&serde_json::json!({"sql": "SELECT id FROM events"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(
        sentinel
            .metric("query_requests_total{outcome=\"timeout\"}")
            .await
            >= 1.0
    );
}

/// `GET /v1/slo` (its status and body) of a fresh gateway over `slo_samples` holding `rows`
/// (`(window_start_utc, ingestion_good, ingestion_total, freshness_good, freshness_total)`
/// tuples in SQL, relative to `now()`).
async fn slo_report_over(name: &str, rows: &str) -> (u16, serde_json::Value) {
    let env = TestEnv::new(name).await;
    let sentinel = env.start("ingress", "ingress").await;
    env.db()
        .await
        .batch_execute(&format!(
            "INSERT INTO slo_samples (window_start_utc, ingestion_good, ingestion_total, \
               freshness_good, freshness_total) VALUES {rows}"
        ))
        .await
        .unwrap();
    let response = reqwest::Client::new()
        .get(format!("{}/v1/slo", sentinel.base_url))
        .bearer_auth(token("acme", &[Role::Read]))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// `GET /v1/slo` against samples whose answers were worked out by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slo_status_matches_hand_computed_fixtures() {
    // (age, ingestion good/total, freshness good/total): 2 min, 3 h, 2 d, 10 d (outside SLO B's
    // 7 days), 40 d (outside both), and one a day ahead (a window no gateway could have
    // answered in yet: outside every window).
    let (_, report) = slo_report_over(
        "slo_math",
        "(date_trunc('minute', now()) - interval '2 minutes', 990, 1000, 95, 100), \
         (date_trunc('minute', now()) - interval '3 hours', 1000, 1000, 100, 100), \
         (date_trunc('minute', now()) - interval '2 days', 998, 1000, 90, 100), \
         (date_trunc('minute', now()) - interval '10 days', 1000, 1000, 0, 100), \
         (date_trunc('minute', now()) - interval '40 days', 0, 1000, 0, 100), \
         (date_trunc('minute', now()) + interval '1 day', 0, 1000, 0, 100)",
    )
    .await;
    let close = |value: &serde_json::Value, expected: f64| {
        value.as_f64().is_some_and(|v| (v - expected).abs() < 1e-9)
    };
    let a = &report["objectives"][0];
    assert_eq!(
        (a["good"].as_i64(), a["total"].as_i64()),
        (Some(3988), Some(4000))
    );
    // 12 bad of 4000 = 0.3% against an allowance of 0.1%.
    assert!(close(&a["compliance"], 0.997), "{a}");
    assert!(close(&a["errorBudgetRemaining"], -2.0), "{a}");
    for (window, burn) in [
        ("5m", 10.0),
        ("30m", 10.0),
        ("1h", 10.0),
        ("6h", 5.0),
        ("1d", 5.0),
        ("3d", 4.0),
    ] {
        assert!(
            close(&a["burnRates"][window], burn),
            "SLO A burn {window}: {a}"
        );
    }
    let b = &report["objectives"][1];
    assert_eq!(
        (b["good"].as_i64(), b["total"].as_i64()),
        (Some(285), Some(300))
    );
    // 15 late of 300 = 5% against an allowance of 1%.
    assert!(close(&b["compliance"], 0.95), "{b}");
    assert!(close(&b["errorBudgetRemaining"], -4.0), "{b}");
    for (window, burn) in [
        ("5m", 5.0),
        ("30m", 5.0),
        ("1h", 5.0),
        ("6h", 2.5),
        ("1d", 2.5),
        ("3d", 5.0),
    ] {
        assert!(
            close(&b["burnRates"][window], burn),
            "SLO B burn {window}: {b}"
        );
    }
}

/// Windows saturated at `bigint`'s maximum (what the writer does rather than overflow) are
/// summed without overflowing the answer: the counts stay at the maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slo_status_of_saturated_windows_is_capped_not_an_error() {
    let (status, report) = slo_report_over(
        "slo_saturated",
        "(date_trunc('minute', now()) - interval '2 minutes', 9223372036854775807, \
           9223372036854775807, 1, 1), \
         (date_trunc('minute', now()) - interval '3 minutes', 9223372036854775807, \
           9223372036854775807, 1, 1)",
    )
    .await;
    assert_eq!(status, 200, "{report}");
    let a = &report["objectives"][0];
    assert_eq!(
        (a["good"].as_i64(), a["total"].as_i64()),
        (Some(i64::MAX), Some(i64::MAX)),
        "{a}"
    );
    assert_eq!(report["objectives"][1]["total"].as_i64(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_cut_at_the_byte_cap() {
    let env = TestEnv::new("query_bytes").await;
    // Each row of `SELECT id` renders as {"id":"<36 characters>"}: 46 bytes, so one fits.
    let sentinel = start_with_fixture(&env, &[("SENTINEL_QUERY_MAX_BYTES", "60")]).await;
    let client = reqwest::Client::new();
    let cut: serde_json::Value = query(
        &client,
        &sentinel.base_url,
        "SELECT id FROM events ORDER BY id",
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(cut["rows"].as_array().map(Vec::len), Some(1), "{cut}");
    assert_eq!(cut["truncated"], true, "{cut}");
    let counted: serde_json::Value = query(
        &client,
        &sentinel.base_url,
        "SELECT count(*) AS n FROM events",
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        counted["truncated"], false,
        "a small answer is whole: {counted}"
    );
}

/// One tenant's queries past `SENTINEL_QUERY_TENANT_CONCURRENCY` get 429 while they wait for the
/// database, and another tenant's queries still run: no tenant can hold the whole read pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_runs_at_most_its_limit_of_queries_at_once() {
    let env = TestEnv::new("query_tenant_slots").await;
    let sentinel = start_with_fixture(&env, &[("SENTINEL_QUERY_TENANT_CONCURRENCY", "1")]).await;
    let base = sentinel.base_url.clone();
    let client = reqwest::Client::new();
    let run_as = |tenant: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            client
                .post(format!("{base}/v1/query"))
                .bearer_auth(token(tenant, &[Role::Read]))
                .json(&serde_json::json!({ "sql": "SELECT count(*) AS n FROM events" }))
                .send()
                .await
                .expect("POST /v1/query")
        })
    };
    // Queries of `events` wait while the test holds the table.
    let mut holder = env.db().await;
    let hold = holder.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let waiting = run_as("acme");
    env.wait_for_lock_waiters(queries::pool::READ_APPLICATION, 1)
        .await;
    let refused = run_as("acme").await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/too-many-queries", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("as many queries at once as it may (1,"),
        "{problem}"
    );
    // Another tenant's query is not refused: it runs, and waits for the table too.
    let other_tenant = run_as("globex");
    env.wait_for_lock_waiters(queries::pool::READ_APPLICATION, 2)
        .await;
    hold.rollback().await.unwrap();
    assert_eq!(waiting.await.unwrap().status(), 200);
    assert_eq!(other_tenant.await.unwrap().status(), 200);
    // The slot is free again once the query answered.
    assert_eq!(run_as("acme").await.unwrap().status(), 200);
}
