//! `GET /openapi.json` describes what the server really does: real responses of every kind are
//! validated against the schema the document gives for their path, method, status and media type.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{envelope, ingest_token, post_event, post_raw, token, PrivateBroker, TestEnv};
use uuid::Uuid;

/// Replaces every `{"$ref": "#/components/schemas/X"}` by the schema it names.
fn inline_refs(schema: &Value, doc: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                let pointer = reference.trim_start_matches('#');
                let target = doc
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling $ref {reference}"));
                return inline_refs(target, doc);
            }
            Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), inline_refs(v, doc)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| inline_refs(v, doc)).collect()),
        other => other.clone(),
    }
}

struct Checker {
    doc: Value,
    checked: Vec<String>,
}

impl Checker {
    async fn check(&mut self, path: &str, method: &str, response: reqwest::Response) -> Value {
        let status = response.status().as_u16().to_string();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .unwrap_or_default();
        let body: Value = response.json().await.expect("a JSON body");
        let operation = &self.doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let documented = &operation["responses"][&status];
        assert!(
            documented.is_object(),
            "{method} {path} answered {status}, which is not documented: {body}"
        );
        let schema = &documented["content"][&content_type]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path} {status} as {content_type} is not documented"
        );
        let schema = inline_refs(schema, &self.doc);
        let validator = jsonschema::draft202012::new(&schema).expect("a valid JSON Schema");
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: {errors:?}\nbody: {body}\nschema: {schema}"
        );
        self.checked.push(format!("{method} {path} {status}"));
        body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_responses_match_the_openapi_document() {
    // A broker of its own, paused to hold the in-flight budget for the 429.
    let broker = PrivateBroker::start().await;
    let env = TestEnv::new("openapi").await;
    let sentinel = env
        .start_with(
            "up",
            "up",
            &[
                ("KAFKA_BROKERS", &broker.address),
                ("SENTINEL_MAX_IN_FLIGHT", "4"),
                ("SENTINEL_MAX_BATCH_EVENTS", "4"),
            ],
        )
        .await;
    let base = sentinel.base_url.as_str();
    let client = reqwest::Client::new();

    let doc: Value = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "OpenAPI 3.1: {}",
        doc["openapi"]
    );
    for path in [
        "/v1/events",
        "/v1/events:batch",
        "/health",
        "/ready",
        "/openapi.json",
        "/v1/slo",
        "/v1/stream",
        "/v1/query",
        "/v1/dead-letters",
        "/v1/dead-letters/{id}",
        "/v1/dead-letters/replay",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    let problem_types: Vec<&str> = doc["components"]["schemas"]["ProblemType"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut checker = Checker {
        doc: doc.clone(),
        checked: Vec::new(),
    };

    let acme = ingest_token("acme");
    let body = envelope(Uuid::new_v4(), "acme", "s-1", 1, "2025-06-15T10:00:00Z");
    checker
        .check(
            "/v1/events",
            "post",
            post_event(&client, base, &acme, "k1", &body).await,
        )
        .await;
    checker
        .check(
            "/v1/events",
            "post",
            post_event(&client, base, &acme, "k1", &body).await,
        )
        .await;
    let mut other = body.clone();
    other["payload"]["seq"] = 99.into();
    checker
        .check(
            "/v1/events",
            "post",
            post_event(&client, base, &acme, "k1", &other).await,
        )
        .await;
    let mut invalid = body.clone();
    invalid["schemaVersion"] = 0.into();
    checker
        .check(
            "/v1/events",
            "post",
            post_event(&client, base, &acme, "k2", &invalid).await,
        )
        .await;
    let malformed = post_raw(&client, base, &acme, "k3", "application/json", "{").await;
    checker.check("/v1/events", "post", malformed).await;
    let anonymous = client
        .post(format!("{base}/v1/events"))
        .json(&body)
        .send()
        .await
        .unwrap();
    checker.check("/v1/events", "post", anonymous).await;
    let reader = token("acme", &[ingress::Role::Read]);
    checker
        .check(
            "/v1/events",
            "post",
            post_event(&client, base, &reader, "k4", &body).await,
        )
        .await;
    let text = post_raw(&client, base, &acme, "k5", "text/plain", "x").await;
    checker.check("/v1/events", "post", text).await;
    let large = post_raw(
        &client,
        base,
        &acme,
        "k6",
        "application/json",
        vec![b' '; 2 * 1024 * 1024],
    )
    .await;
    checker.check("/v1/events", "post", large).await;

    let lines: String = (0..3)
        .map(|i| serde_json::json!({"idempotencyKey": format!("b{i}"), "event": envelope(Uuid::new_v4(), "acme", "s-2", i, "2025-06-15T10:00:00Z")}).to_string() + "\n")
        .chain(["{\"bad\": true}\n".to_owned()])
        .collect();
    let batch = client
        .post(format!("{base}/v1/events:batch"))
        .bearer_auth(&acme)
        .header("content-type", "application/x-ndjson")
        .body(lines.clone())
        .send()
        .await
        .unwrap();
    let answer = checker.check("/v1/events:batch", "post", batch).await;
    for result in answer["results"].as_array().unwrap() {
        if let Some(kind) = result["problem"]["type"].as_str() {
            assert!(
                problem_types.contains(&kind),
                "{kind} is not a documented problem type"
            );
        }
    }
    let ndjson_of = |keys: std::ops::Range<usize>| -> String {
        keys.map(|i| serde_json::json!({"idempotencyKey": format!("m{i}"), "event": envelope(Uuid::new_v4(), "acme", "s-3", i, "2025-06-15T10:00:00Z")}).to_string() + "\n")
            .collect()
    };
    let post_batch = |body: String| {
        client
            .post(format!("{base}/v1/events:batch"))
            .bearer_auth(&acme)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    // More events than a batch may hold: 413.
    let oversized = post_batch(ndjson_of(0..5)).await.unwrap();
    let problem = checker.check("/v1/events:batch", "post", oversized).await;
    assert_eq!(
        problem["detail"], "the batch has 5 events; the limit is 4",
        "{problem}"
    );
    // Two batches of three events for a budget of four, while the paused broker holds whichever
    // is admitted first: the other gets 429 at once.
    broker.pause();
    let mut first = tokio::spawn(post_batch(ndjson_of(10..13)));
    let mut second = tokio::spawn(post_batch(ndjson_of(20..23)));
    let (overloaded, held) = tokio::select! {
        answer = &mut first => (answer, second),
        answer = &mut second => (answer, first),
    };
    broker.resume();
    let overloaded = overloaded.unwrap().unwrap();
    assert_eq!(overloaded.status(), 429);
    checker.check("/v1/events:batch", "post", overloaded).await;
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    let reader = token("acme", &[ingress::Role::Read]);
    let slo = client
        .get(format!("{base}/v1/slo"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    checker.check("/v1/slo", "get", slo).await;

    // The read side: queries (rows, a rejection with its location, GET), dead letters, replay.
    let post_query = |sql: &str| {
        client
            .post(format!("{base}/v1/query"))
            .bearer_auth(&reader)
            .json(&serde_json::json!({ "sql": sql }))
            .send()
    };
    let rows = checker
        .check(
            "/v1/query",
            "post",
            post_query("SELECT type, count(*) AS n FROM events GROUP BY type")
                .await
                .unwrap(),
        )
        .await;
    assert!(rows["rows"].is_array());
    let rejected = checker
        .check(
            "/v1/query",
            "post",
            post_query("SELECT * FROM pg_class").await.unwrap(),
        )
        .await;
    assert!(problem_types.contains(&rejected["type"].as_str().unwrap()));
    assert_eq!(rejected["location"]["token"], "pg_class");
    checker
        .check(
            "/v1/query",
            "get",
            client
                .get(format!("{base}/v1/query"))
                .query(&[("sql", "SELECT count(*) AS n FROM stream_state")])
                .bearer_auth(&reader)
                .send()
                .await
                .unwrap(),
        )
        .await;
    let list = checker
        .check(
            "/v1/dead-letters",
            "get",
            client
                .get(format!("{base}/v1/dead-letters?limit=5"))
                .bearer_auth(&reader)
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert!(list["items"].is_array());
    let missing = checker
        .check(
            "/v1/dead-letters/{id}",
            "get",
            client
                .get(format!("{base}/v1/dead-letters/999999"))
                .bearer_auth(&reader)
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert!(problem_types.contains(&missing["type"].as_str().unwrap()));
    checker
        .check(
            "/v1/dead-letters/replay",
            "post",
            client
                .post(format!("{base}/v1/dead-letters/replay"))
                .bearer_auth(token("acme", &[ingress::Role::Admin]))
                .json(
                    &serde_json::json!({"filter": {"reason": "schema_violation"}, "dryRun": true}),
                )
                .send()
                .await
                .unwrap(),
        )
        .await;
    let stream_problem = checker
        .check(
            "/v1/stream",
            "get",
            client
                .get(format!("{base}/v1/stream"))
                .bearer_auth(&reader)
                .header("last-event-id", "nonsense")
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert!(problem_types.contains(&stream_problem["type"].as_str().unwrap()));

    checker
        .check(
            "/health",
            "get",
            client.get(format!("{base}/health")).send().await.unwrap(),
        )
        .await;
    checker
        .check(
            "/ready",
            "get",
            client.get(format!("{base}/ready")).send().await.unwrap(),
        )
        .await;
    checker
        .check(
            "/openapi.json",
            "get",
            client
                .get(format!("{base}/openapi.json"))
                .send()
                .await
                .unwrap(),
        )
        .await;

    let statuses: Vec<&String> = checker.checked.iter().collect();
    for expected in [
        "post /v1/events 202",
        "post /v1/events 409",
        "post /v1/events 400",
        "post /v1/events 401",
        "post /v1/events 403",
        "post /v1/events 415",
        "post /v1/events 413",
        "post /v1/events:batch 200",
        "post /v1/events:batch 413",
        "post /v1/events:batch 429",
        "get /v1/slo 200",
        "post /v1/query 200",
        "post /v1/query 400",
        "get /v1/query 200",
        "get /v1/dead-letters 200",
        "get /v1/dead-letters/{id} 404",
        "post /v1/dead-letters/replay 200",
        "get /v1/stream 400",
    ] {
        assert!(
            statuses.iter().any(|s| *s == expected),
            "{expected} was not exercised: {statuses:?}"
        );
    }
    let _ = env.wait_for_events(4, Duration::from_secs(30)).await;
}
