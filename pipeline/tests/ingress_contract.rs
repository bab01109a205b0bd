//! The gateway's contract through the real HTTP server, broker and PostgreSQL: every refusal
//! with its status and problem type, idempotent replays and conflicts (including the 50-request
//! race), batches, the in-flight budget, and failures of the broker and of the claim store.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use ingress::Role;
use support::{
    envelope, ingest_token, post_event, post_raw, token, PrivateBroker, TestEnv, JWT_SECRET,
};
use uuid::Uuid;

fn event(tenant: &str, seq: usize) -> serde_json::Value {
    envelope(
        Uuid::new_v4(),
        tenant,
        "stream-1",
        seq,
        "2025-06-15T10:00:00Z",
    )
}

async fn problem_of(
    response: reqwest::Response,
    status: u16,
    problem_type: &str,
    what: &str,
) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "{what}: status");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{what}: content type"
    );
    let problem: serde_json::Value = response.json().await.expect("problem body");
    assert_eq!(problem["type"], problem_type, "{what}: {problem}");
    assert_eq!(problem["status"], status, "{what}");
    assert!(
        problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: detail"
    );
    problem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_problem_type() {
    let env = TestEnv::new("refusals").await;
    let sentinel = env.start("up", "up").await;
    let base = sentinel.base_url.as_str();
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/events");
    let body = event("acme", 1);
    let good = ingest_token("acme");

    // 401: no token, a token signed with another secret, an expired token.
    let response = client
        .post(&url)
        .header("idempotency-key", "k")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="sentinel""#
    );
    problem_of(response, 401, "/problems/unauthorized", "no token").await;
    let forged = ingress::auth::mint_hs256(
        "another-secret-another-secret-xxxx",
        "acme",
        &[Role::Ingest],
        Duration::from_secs(60),
        None,
        None,
    )
    .unwrap();
    let response = post_event(&client, base, &forged, "k", &body).await;
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    problem_of(response, 401, "/problems/unauthorized", "forged token").await;
    let expired = jsonwebtoken_expired();
    problem_of(
        post_event(&client, base, &expired, "k", &body).await,
        401,
        "/problems/unauthorized",
        "expired token",
    )
    .await;

    // 403: a token without the ingest role, and a body for another tenant.
    let reader = token("acme", &[Role::Read]);
    problem_of(
        post_event(&client, base, &reader, "k", &body).await,
        403,
        "/problems/missing-role",
        "read-only token",
    )
    .await;
    let other_tenant = ingest_token("globex");
    problem_of(
        post_event(&client, base, &other_tenant, "k", &body).await,
        403,
        "/problems/tenant-mismatch",
        "tenant mismatch",
    )
    .await;

    // 415, 400 for the idempotency key, 413, 400 for the body.
    let response = client
        .post(&url)
        .bearer_auth(&good)
        .header("idempotency-key", "k")
        .header("content-type", "text/plain")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    problem_of(
        response,
        415,
        "/problems/unsupported-media-type",
        "text/plain",
    )
    .await;
    let response = client
        .post(&url)
        .bearer_auth(&good)
        .json(&body)
        .send()
        .await
        .unwrap();
    problem_of(response, 400, "/problems/invalid-idempotency-key", "no key").await;
    problem_of(
        post_event(&client, base, &good, &"k".repeat(256), &body).await,
        400,
        "/problems/invalid-idempotency-key",
        "long key",
    )
    .await;
    let response = client
        .post(&url)
        .bearer_auth(&good)
        .header("idempotency-key", "k")
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    problem_of(response, 413, "/problems/body-too-large", "2 MiB body").await;
    // An over-limit body the client is still writing when the gateway has decided: the gateway
    // reads it to its end before answering, so the client reads the 413 (not a reset), with
    // the length declared up front and in chunks without one.
    for attempt in 0..3 {
        let response = client
            .post(&url)
            .bearer_auth(&good)
            .header("idempotency-key", "k")
            .header("content-type", "application/json")
            .body(vec![b' '; 16 * 1024 * 1024])
            .send()
            .await
            .unwrap_or_else(|e| panic!("16 MiB body, attempt {attempt}: {e:?}"));
        problem_of(response, 413, "/problems/body-too-large", "16 MiB body").await;
    }
    let chunks = (0..48).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024]));
    let response = client
        .post(&url)
        .bearer_auth(&good)
        .header("idempotency-key", "k")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("3 MiB chunked body");
    let problem = problem_of(response, 413, "/problems/body-too-large", "3 MiB chunked").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("1048576 bytes"),
        "{problem}"
    );
    // A client waiting for `100 Continue` before it sends an over-limit body is refused at
    // once: the answer comes though no byte of the body was sent.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = base.trim_start_matches("http://");
        let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {good}\r\n\
             idempotency-key: k\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nexpect: 100-continue\r\n\r\n",
            16 * 1024 * 1024
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut answer))
            .await
            .expect("an answer without sending the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "expected 413 before the body: {answer}"
        );
    }
    let response = client
        .post(&url)
        .bearer_auth(&good)
        .header("idempotency-key", "k")
        .header("content-type", "application/json")
        .body("{\"eventId\": ")
        .send()
        .await
        .unwrap();
    let problem = problem_of(response, 400, "/problems/malformed-json", "truncated JSON").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("line 1"),
        "{problem}"
    );
    let mut invalid = body.clone();
    invalid["eventId"] = serde_json::json!("nope");
    invalid["schemaVersion"] = serde_json::json!(0);
    invalid["payload"] = serde_json::json!([]);
    let problem = problem_of(
        post_event(&client, base, &good, "k", &invalid).await,
        400,
        "/problems/invalid-event",
        "invalid event",
    )
    .await;
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        ["/eventId", "/schemaVersion", "/payload"],
        "{problem}"
    );
    // An integer a double cannot hold (beyond ±2^53) would hash like its neighbours, so a
    // changed payload would replay as the old one: it is refused where it is.
    let mut inexact = body.clone();
    inexact["payload"] = serde_json::from_str(r#"{"accountId":9007199254740993}"#).unwrap();
    let problem = problem_of(
        post_event(&client, base, &good, "k-inexact", &inexact).await,
        400,
        "/problems/invalid-event",
        "an integer beyond 2^53",
    )
    .await;
    assert_eq!(
        problem["errors"][0]["pointer"], "/payload/accountId",
        "{problem}"
    );
    assert!(
        problem["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("send it as a string"),
        "{problem}"
    );

    // 404 and 405 are problems too.
    let response = client
        .get(format!("{base}/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    problem_of(response, 404, "/problems/not-found", "unknown path").await;
    let response = client.get(&url).send().await.unwrap();
    problem_of(
        response,
        405,
        "/problems/method-not-allowed",
        "GET /v1/events",
    )
    .await;

    // None of it reached the dataflow.
    let accepted = post_event(&client, base, &good, "k-accepted", &body).await;
    assert_eq!(accepted.status(), 202);
    assert_eq!(env.wait_for_events(1, Duration::from_secs(30)).await, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.event_count(&env.db().await).await,
        1,
        "a refused request reached events"
    );
}

fn jsonwebtoken_expired() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = ingress::auth::Claims {
        tenant: "acme".into(),
        roles: vec!["ingest".into()],
        sub: None,
        exp: now - 3600,
        nbf: None,
        iat: None,
        iss: None,
        aud: None,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_replays_other_payload_conflicts_and_tenants_are_separate() {
    let env = TestEnv::new("replay").await;
    let sentinel = env.start("up", "up").await;
    let base = sentinel.base_url.as_str();
    let client = reqwest::Client::new();
    let acme = ingest_token("acme");
    let body = event("acme", 1);

    let first = post_event(&client, base, &acme, "order-1", &body).await;
    assert_eq!(first.status(), 202);
    assert!(
        first.headers().get("idempotent-replayed").is_none(),
        "the original is not a replay"
    );
    let original: serde_json::Value = first.json().await.unwrap();

    // The same payload, spelled differently (key order, whitespace, number spelling).
    let mut respelled = serde_json::Map::new();
    for (key, value) in body.as_object().unwrap().iter().rev() {
        respelled.insert(key.clone(), value.clone());
    }
    let text = serde_json::to_string_pretty(&respelled)
        .unwrap()
        .replace("\"seq\": 1", "\"seq\": 1.0");
    let replay = post_raw(&client, base, &acme, "order-1", "application/json", text).await;
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replayed: serde_json::Value = replay.json().await.unwrap();
    assert_eq!(replayed, original, "a replay returns the original body");

    // The claim stores its answer as typed columns, not as a document; a claim stored by an
    // earlier version, as a `response` document, replays the same body.
    let legacy_body = event("acme", 7);
    let legacy_first = post_event(&client, base, &acme, "order-legacy", &legacy_body).await;
    assert_eq!(legacy_first.status(), 202);
    let legacy_original: serde_json::Value = legacy_first.json().await.unwrap();
    let db = env.db().await;
    let stored = db
        .query_one(
            "SELECT response IS NULL, encode(trace_id, 'hex'), received_utc IS NOT NULL \
             FROM idempotency WHERE tenant_id = 'acme' AND idempotency_key = 'order-legacy'",
            &[],
        )
        .await
        .unwrap();
    assert!(stored.get::<_, bool>(0), "no response document is stored");
    assert_eq!(stored.get::<_, String>(1), legacy_original["traceId"]);
    assert!(stored.get::<_, bool>(2), "the receive time is stored");
    let rewritten = db
        .execute(
            "UPDATE idempotency SET response = $1::text::jsonb, received_utc = NULL, \
                trace_id = NULL \
             WHERE tenant_id = 'acme' AND idempotency_key = 'order-legacy'",
            &[&legacy_original.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(rewritten, 1);
    let legacy_replay = post_event(&client, base, &acme, "order-legacy", &legacy_body).await;
    assert_eq!(legacy_replay.status(), 202);
    assert_eq!(legacy_replay.headers()["idempotent-replayed"], "true");
    let legacy_replayed: serde_json::Value = legacy_replay.json().await.unwrap();
    assert_eq!(
        legacy_replayed, legacy_original,
        "a claim stored as a document replays the original body"
    );

    let mut changed = body.clone();
    changed["payload"]["seq"] = serde_json::json!(2);
    let conflict = post_event(&client, base, &acme, "order-1", &changed).await;
    problem_of(
        conflict,
        409,
        "/problems/idempotency-key-mismatch",
        "other payload",
    )
    .await;

    let globex_body = event("globex", 1);
    let other_tenant = post_event(
        &client,
        base,
        &ingest_token("globex"),
        "order-1",
        &globex_body,
    )
    .await;
    assert_eq!(
        other_tenant.status(),
        202,
        "the same key in another tenant is another claim"
    );
    assert!(other_tenant.headers().get("idempotent-replayed").is_none());

    assert_eq!(env.wait_for_events(3, Duration::from_secs(30)).await, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.event_count(&env.db().await).await, 3);
    assert_eq!(
        env.consumed_records(&env.db().await).await,
        3,
        "a replay is never written again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_with_one_key_yield_one_event() {
    let env = TestEnv::new("race").await;
    let sentinel = env.start("up", "up").await;
    let base = sentinel.base_url.clone();
    let client = reqwest::Client::new();
    let acme = ingest_token("acme");
    let payload_a = event("acme", 1);
    let payload_b = event("acme", 2);

    let requests = (0..50).map(|i| {
        let body = if i % 2 == 0 {
            payload_a.clone()
        } else {
            payload_b.clone()
        };
        let (client, base, acme) = (client.clone(), base.clone(), acme.clone());
        async move {
            let response = post_event(&client, &base, &acme, "the-one-key", &body).await;
            let status = response.status().as_u16();
            let replayed = response.headers().get("idempotent-replayed").is_some();
            let json: serde_json::Value = response.json().await.unwrap();
            (body["eventId"].clone(), status, replayed, json)
        }
    });
    let answers = join_all(requests).await;
    let originals: Vec<_> = answers.iter().filter(|a| a.1 == 202 && !a.2).collect();
    assert_eq!(originals.len(), 1, "exactly one original 202: {answers:?}");
    let winner = originals[0].0.clone();
    let winner_body = originals[0].3.clone();
    let mut tally: BTreeMap<(bool, u16), usize> = BTreeMap::new();
    for (event_id, status, replayed, json) in &answers {
        let same_payload = *event_id == winner;
        *tally.entry((same_payload, *status)).or_default() += 1;
        if same_payload && !replayed {
            continue;
        }
        if same_payload {
            assert_eq!(*status, 202, "same payload must replay: {json}");
            assert_eq!(*json, winner_body, "a replay returns the original body");
        } else {
            assert_eq!(*status, 409, "other payload must conflict: {json}");
            assert_eq!(json["type"], "/problems/idempotency-key-mismatch");
        }
    }
    assert_eq!(tally.values().sum::<usize>(), 50, "{tally:?}");

    assert_eq!(env.wait_for_events(1, Duration::from_secs(30)).await, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let db = env.db().await;
    let ids: Vec<Uuid> = db
        .query("SELECT id FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ids,
        vec![winner.as_str().unwrap().parse::<Uuid>().unwrap()],
        "never two events for one key"
    );
    assert_eq!(
        env.consumed_records(&db).await,
        1,
        "one key, one record on the topic"
    );
}

fn ndjson(lines: &[serde_json::Value]) -> String {
    lines.iter().map(|l| l.to_string() + "\n").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answer_per_line_and_respect_their_limits() {
    let env = TestEnv::new("batch").await;
    let sentinel = env
        .start_with(
            "up",
            "up",
            &[
                ("SENTINEL_MAX_BATCH_EVENTS", "20"),
                ("SENTINEL_MAX_IN_FLIGHT", "8"),
            ],
        )
        .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/events:batch", sentinel.base_url);
    let acme = ingest_token("acme");
    let post = |body: String| {
        client
            .post(&url)
            .bearer_auth(&acme)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };

    let (a, b, c) = (event("acme", 1), event("acme", 2), event("acme", 3));
    let mut invalid = event("acme", 4);
    invalid["timestampUtc"] = serde_json::json!("yesterday");
    let body = ndjson(&[
        serde_json::json!({"idempotencyKey": "b-1", "event": a}),
        serde_json::json!({"idempotencyKey": "b-2", "event": b}),
        serde_json::json!({"idempotencyKey": "b-4", "event": invalid}),
        serde_json::json!({"idempotencyKey": "b-3", "event": c}),
        serde_json::json!({"idempotencyKey": "b-1", "event": a}),
        serde_json::json!({"event": a}),
    ]) + "not json\n";
    let response = post(body).await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    let statuses: Vec<u64> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [202, 202, 400, 202, 202, 400, 400], "{answer}");
    let lines: Vec<u64> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(
        answer["results"][2]["problem"]["errors"][0]["pointer"],
        "/timestampUtc"
    );
    assert_eq!(
        answer["results"][4]["replayed"], true,
        "a repeated key in one batch replays"
    );
    assert_eq!(
        answer["results"][4]["eventId"],
        answer["results"][0]["eventId"]
    );
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(4), Some(3))
    );

    // A line's key follows the header's rules, so that it can be retried through POST /v1/events.
    let answer: serde_json::Value = post(ndjson(&[
        serde_json::json!({"idempotencyKey": "ключ", "event": event("acme", 30)}),
    ]))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(answer["results"][0]["status"], 400, "{answer}");
    assert_eq!(
        answer["results"][0]["problem"]["type"], "/problems/invalid-idempotency-key",
        "{answer}"
    );
    // Over the whole in-flight budget (8), though within the batch size (20): such a batch could
    // never be admitted, so 413 naming the budget (not a 429 to retry forever); nothing written.
    let too_many: Vec<_> = (10..20)
        .map(|i| serde_json::json!({"idempotencyKey": format!("m-{i}"), "event": event("acme", i)}))
        .collect();
    let problem = problem_of(
        post(ndjson(&too_many)).await.unwrap(),
        413,
        "/problems/batch-too-large",
        "over the in-flight budget",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains(
            "10 events; the gateway's whole in-flight budget (SENTINEL_MAX_IN_FLIGHT) is 8"
        ),
        "{problem}"
    );
    // Not NDJSON: 415.
    let response = client
        .post(&url)
        .bearer_auth(&acme)
        .json(&serde_json::json!([]))
        .send()
        .await
        .unwrap();
    problem_of(
        response,
        415,
        "/problems/unsupported-media-type",
        "JSON array",
    )
    .await;

    assert_eq!(env.wait_for_events(3, Duration::from_secs(30)).await, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.event_count(&env.db().await).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_failure_between_claim_and_ack_does_not_swallow_the_retry() {
    let broker = PrivateBroker::start().await;
    let env = TestEnv::new("brokerfail").await;
    let sentinel = env
        .start_with(
            "up",
            "up",
            &[
                ("KAFKA_BROKERS", &broker.address),
                ("SENTINEL_PRODUCE_TIMEOUT_MS", "2000"),
            ],
        )
        .await;
    let base = sentinel.base_url.as_str();
    let client = reqwest::Client::new();
    let acme = ingest_token("acme");
    let warm = post_event(&client, base, &acme, "warm", &event("acme", 0)).await;
    assert_eq!(warm.status(), 202);

    broker.pause();
    let lost_ack = event("acme", 1);
    let response = post_event(&client, base, &acme, "during-outage", &lost_ack).await;
    assert!(response.headers().contains_key("retry-after"));
    problem_of(
        response,
        503,
        "/problems/broker-unavailable",
        "paused broker",
    )
    .await;
    // A client that gives up mid-request leaves no stuck claim either.
    let impatient = event("acme", 2);
    let gave_up = client
        .post(format!("{base}/v1/events"))
        .bearer_auth(&acme)
        .header("idempotency-key", "impatient")
        .json(&impatient)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        gave_up.is_err(),
        "the request should have timed out on the client"
    );
    broker.resume();

    // Clients retry after Retry-After; within seconds of the broker's return both keys are
    // written.
    for (key, body) in [("during-outage", &lost_ack), ("impatient", &impatient)] {
        let mut status = 0;
        for _ in 0..30 {
            status = post_event(&client, base, &acme, key, body)
                .await
                .status()
                .as_u16();
            if status == 202 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(
            status,
            202,
            "{key}: the retry after the outage is written; log:\n{}",
            sentinel.log()
        );
    }

    assert_eq!(
        env.wait_for_events(3, Duration::from_secs(60)).await,
        3,
        "log:\n{}",
        sentinel.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (good, total, _, _) = env.slo_totals(4).await;
    assert!(
        total - good >= 1,
        "the 503 answered during the outage counts against the ingestion SLO ({good} good of {total})"
    );
    let db = env.db().await;
    let ids: Vec<Uuid> = db
        .query("SELECT id FROM events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut expected: Vec<Uuid> = [&event_id(&lost_ack), &event_id(&impatient)]
        .into_iter()
        .copied()
        .collect();
    expected.push(
        ids.iter()
            .copied()
            .find(|id| !expected.contains(id))
            .expect("the warm-up event"),
    );
    expected.sort();
    assert_eq!(ids, expected, "each event exactly once");
}

fn event_id(body: &serde_json::Value) -> Uuid {
    body["eventId"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_claim_store_answers_503_and_recovers() {
    let env = TestEnv::new("storedown").await;
    let sentinel = env.start("up", "up").await;
    let base = sentinel.base_url.as_str();
    let client = reqwest::Client::new();
    let acme = ingest_token("acme");
    assert_eq!(
        post_event(&client, base, &acme, "before", &event("acme", 0))
            .await
            .status(),
        202
    );

    env.refuse_connections().await;
    let body = event("acme", 1);
    let response = post_event(&client, base, &acme, "during", &body).await;
    assert!(response.headers().contains_key("retry-after"));
    problem_of(
        response,
        503,
        "/problems/idempotency-store-unavailable",
        "database refusing connections",
    )
    .await;
    env.allow_connections().await;

    let mut status = 0;
    for _ in 0..20 {
        status = post_event(&client, base, &acme, "during", &body)
            .await
            .status()
            .as_u16();
        if status == 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(status, 202, "the retry succeeds once the store is back");
    assert_eq!(
        env.wait_for_events(2, Duration::from_secs(60)).await,
        2,
        "log:\n{}",
        sentinel.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_carries_the_shared_headers() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};

    let env = TestEnv::new("headers").await;
    let sentinel = env.start("up", "up").await;
    let client = reqwest::Client::new();
    let body = event("acme", 7);
    let response = client
        .post(format!("{}/v1/events", sentinel.base_url))
        .bearer_auth(ingest_token("acme"))
        .header("idempotency-key", "header-check")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("tracestate", "vendor=1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        accepted["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the client's trace is continued"
    );

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .set("group.id", "header-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..4 {
        assignment
            .add_partition_offset(&env.raw_topic(), partition, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let message = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the record never arrived"
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            break message.detach();
        }
    };
    assert_eq!(
        message.key(),
        Some(&b"acme|stream-1"[..]),
        "keyed tenantId|streamKey"
    );
    let sent: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
    assert_eq!(sent, body, "the value is the event as sent");
    let headers: BTreeMap<String, String> = message
        .headers()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h.key.to_owned(),
                String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
            )
        })
        .collect();
    let traceparent = &headers["traceparent"];
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "the gateway's own span is the parent"
    );
    assert_eq!(headers["tracestate"], "vendor=1");
    assert_eq!(headers["sentinel-idempotency-key"], "header-check");
    assert_eq!(headers["sentinel-received-at"], accepted["receivedAtUtc"]);
    assert_eq!(
        headers["sentinel-payload-hash"],
        operators::canonical::canonical_hash(&body).unwrap()
    );
}

/// Claims expire faster than one batch a purge interval: at 1,000 events/s, a minute's
/// interval expires 60,000 claims, six batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_purge_deletes_every_expired_claim_however_many_batches_they_fill() {
    let env = TestEnv::new("purge").await;
    let mut db = env.db().await;
    sinks::postgres::migrate(&mut db).await.unwrap();
    let expired = 2 * ingress::idempotency::PURGE_BATCH + 500;
    db.execute(
        "INSERT INTO idempotency (tenant_id, idempotency_key, payload_hash, event_id, state, \
            lease_until_utc, expires_utc) \
         SELECT 'acme', 'key-' || n, 'hash', gen_random_uuid(), 'completed', now(), \
            CASE WHEN n <= $1::bigint THEN now() - interval '1 s' ELSE now() + interval '1 h' END \
         FROM generate_series(1, $1::bigint + 7) AS n",
        &[&expired],
    )
    .await
    .unwrap();
    let purged = ingress::idempotency::purge_expired(&db).await.unwrap();
    assert_eq!(purged, expired as u64);
    let left: i64 = db
        .query_one("SELECT count(*) FROM idempotency", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 7, "the claims within their retention are kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_expire_after_the_retention_and_are_purged() {
    let env = TestEnv::new("expiry").await;
    let sentinel = env
        .start_with(
            "up",
            "up",
            &[
                ("SENTINEL_IDEMPOTENCY_RETENTION_SECONDS", "1"),
                ("SENTINEL_IDEMPOTENCY_PURGE_INTERVAL_SECONDS", "1"),
                // A claim lasts at least its lease, twice the produce timeout and 5 s: 7 s here.
                ("SENTINEL_PRODUCE_TIMEOUT_MS", "1000"),
            ],
        )
        .await;
    let base = sentinel.base_url.as_str();
    let client = reqwest::Client::new();
    let acme = ingest_token("acme");
    assert_eq!(
        post_event(&client, base, &acme, "short-lived", &event("acme", 1))
            .await
            .status(),
        202
    );
    let db = env.db().await;
    let claims: i64 = db
        .query_one("SELECT count(*) FROM idempotency", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(claims, 1, "the claim is stored");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let claims: i64 = db
            .query_one("SELECT count(*) FROM idempotency", &[])
            .await
            .unwrap()
            .get(0);
        if claims == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expired claim was never purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // After the retention the key is free again, even for another payload.
    let again = post_event(&client, base, &acme, "short-lived", &event("acme", 2)).await;
    assert_eq!(again.status(), 202);
    assert!(again.headers().get("idempotent-replayed").is_none());
    // And the dataflow, whose de-duplication remembers events for 24 h, stores it as the new
    // event it is rather than dead-lettering it as a conflict with the key's first event.
    assert_eq!(env.wait_for_events(2, Duration::from_secs(20)).await, 2);
    let dead_letters: i64 = db
        .query_one("SELECT count(*) FROM dead_letter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        dead_letters, 0,
        "the event accepted under the freed key was dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_claim_group_lingers_for_more_claims() {
    const REQUESTS: usize = 6;
    let env = TestEnv::new("linger").await;
    let sentinel = env
        .start_with("up", "up", &[("SENTINEL_IDEMPOTENCY_LINGER_MS", "400")])
        .await;
    let base = sentinel.base_url.clone();
    let client = reqwest::Client::new();
    let acme = ingest_token("acme");
    let before = sentinel
        .metric(r#"idempotency_statements_total{kind="claim"}"#)
        .await;
    // Requests 30 ms apart, well inside the first group's linger.
    let mut requests = Vec::new();
    for seq in 0..REQUESTS {
        let (client, base, acme) = (client.clone(), base.clone(), acme.clone());
        requests.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let key = format!("linger-{seq}");
            let status = post_event(&client, &base, &acme, &key, &event("acme", seq))
                .await
                .status();
            (status, started.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut first_took = Duration::ZERO;
    for (seq, request) in requests.into_iter().enumerate() {
        let (status, took) = request.await.unwrap();
        assert_eq!(status, 202, "request {seq}");
        if seq == 0 {
            first_took = took;
        }
    }
    let statements = sentinel
        .metric(r#"idempotency_statements_total{kind="claim"}"#)
        .await
        - before;
    assert!(
        statements <= 2.0,
        "{REQUESTS} claims 30 ms apart took {statements} claim statements with a 400 ms linger"
    );
    assert!(
        first_took >= Duration::from_millis(400),
        "the first claim did not linger: answered in {first_took:?}"
    );
    let claims: i64 = env
        .db()
        .await
        .query_one("SELECT count(*) FROM idempotency", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(claims, REQUESTS as i64, "every claim was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_queued_behind_a_conflicting_request_still_replays() {
    let env = TestEnv::new("queued").await;
    let sentinel = env.start("up", "up").await;
    let client = reqwest::Client::new();
    let acme = ingest_token("acme");
    let original = event("acme", 1);
    let first = post_event(&client, &sentinel.base_url, &acme, "contested", &original).await;
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    // In one batch the conflicting line takes the key's turn first; the duplicate behind it must
    // be judged against the stored claim (a replay), not against the line ahead of it.
    let mut conflicting = original.clone();
    conflicting["payload"]["seq"] = serde_json::json!(2);
    let body = ndjson(&[
        serde_json::json!({"idempotencyKey": "contested", "event": conflicting}),
        serde_json::json!({"idempotencyKey": "contested", "event": original}),
    ]);
    let answer: serde_json::Value = client
        .post(format!("{}/v1/events:batch", sentinel.base_url))
        .bearer_auth(&acme)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["results"][0]["status"], 409, "{answer}");
    assert_eq!(answer["results"][1]["status"], 202, "{answer}");
    assert_eq!(answer["results"][1]["replayed"], true, "{answer}");
    assert_eq!(answer["results"][1]["eventId"], first["eventId"]);
}

/// A claim store of its own on `env`'s migrated database (purging every 100 ms), with the key
/// `key` of tenant `acme`, and a connection to the database.
async fn claim_store(
    env: &TestEnv,
    key: &str,
    retention: Duration,
    lease: Duration,
) -> (
    ingress::idempotency::ClaimStore,
    ingress::idempotency::ClaimKey,
    tokio_postgres::Client,
) {
    let mut db = env.db().await;
    sinks::postgres::migrate(&mut db).await.unwrap();
    let store = ingress::idempotency::ClaimStore::start(claim_settings(env, retention, lease));
    let key = ingress::idempotency::ClaimKey {
        tenant_id: "acme".into(),
        key: key.into(),
    };
    (store, key, db)
}

/// The first line the gateway answers to a `POST /v1/events` that declares a body of 1,000
/// bytes and waits for `100 Continue` before sending it, with `authorization` among its headers.
fn first_answer_to_expect_continue(base_url: &str, authorization: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let address = base_url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "POST /v1/events HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Idempotency-Key: expect\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\
         {authorization}\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

/// An anonymous client is refused on its headers: the gateway never asks for, reads or buffers
/// its body (else every unauthenticated connection could make it hold a batch's 8 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_request_is_refused_before_its_body_is_asked_for() {
    let env = TestEnv::new("auth_before_body").await;
    let sentinel = env.start("up", "up").await;
    let base = sentinel.base_url.clone();
    let bearer = format!("Authorization: Bearer {}", ingest_token("acme"));
    let (anonymous, authenticated) = tokio::task::spawn_blocking(move || {
        (
            first_answer_to_expect_continue(&base, "X-Anonymous: yes"),
            first_answer_to_expect_continue(&base, &bearer),
        )
    })
    .await
    .unwrap();
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous:?}");
    // The same request with a valid token is asked for its body.
    assert!(
        authenticated.starts_with("HTTP/1.1 100"),
        "{authenticated:?}"
    );
}

/// Settings of a claim store on `env`'s database: groups of up to 100, written at once, purged
/// every 100 ms.
fn claim_settings(
    env: &TestEnv,
    retention: Duration,
    lease: Duration,
) -> ingress::idempotency::IdempotencySettings {
    ingress::idempotency::IdempotencySettings {
        database_url: env.database_url.clone(),
        retention,
        lease,
        max_batch: 100,
        linger: Duration::ZERO,
        purge_interval: Duration::from_millis(100),
    }
}

/// A claim store (a gateway instance's) on `env`'s database whose small groups linger 50 ms, so
/// that what a test queues at once is written in one group.
fn lingering_claim_store(env: &TestEnv) -> ingress::idempotency::ClaimStore {
    ingress::idempotency::ClaimStore::start(ingress::idempotency::IdempotencySettings {
        linger: Duration::from_millis(50),
        ..claim_settings(env, Duration::from_secs(3600), Duration::from_secs(5))
    })
}

/// Two gateway instances' claim stores (see [`lingering_claim_store`]) on `env`'s migrated
/// database, and a connection to it.
async fn two_lingering_instances(
    env: &TestEnv,
) -> (
    ingress::idempotency::ClaimStore,
    ingress::idempotency::ClaimStore,
    tokio_postgres::Client,
) {
    let mut db = env.db().await;
    sinks::postgres::migrate(&mut db).await.unwrap();
    (lingering_claim_store(env), lingering_claim_store(env), db)
}

/// Two gateway instances whose claim groups share keys, queued in opposite orders, must not
/// wait on each other in a cycle: PostgreSQL would break it only after its `deadlock_timeout`
/// (1 s), and abort one group. The test holds the first key of each order (an uncommitted
/// claim of its own) until both groups wait for one, then lets them race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_claiming_the_same_keys_in_opposite_orders_do_not_deadlock() {
    use ingress::idempotency::{ClaimKey, ClaimOutcome, ClaimStore, StoredAnswer};
    let env = TestEnv::new("claim_order").await;
    let (first, second, mut db) = two_lingering_instances(&env).await;
    let answer = StoredAnswer {
        event_id: Uuid::from_u128(1),
        received_at: chrono::Utc::now(),
        trace_id: [1; 16],
    };
    for round in 0..2 {
        let keys: Vec<ClaimKey> = (0..100)
            .map(|n| ClaimKey {
                tenant_id: "acme".into(),
                key: format!("round-{round}-key-{n:03}"),
            })
            .collect();
        let claims = |store: &ClaimStore, keys: Vec<ClaimKey>| {
            let store = store.clone();
            tokio::spawn(async move {
                join_all(
                    keys.into_iter()
                        .map(|key| store.claim(key, "hash".into(), answer)),
                )
                .await
            })
        };
        let holder = db.transaction().await.unwrap();
        for key in [&keys[0], &keys[99]] {
            holder
                .execute(
                    "INSERT INTO idempotency (tenant_id, idempotency_key, payload_hash, event_id, \
                        state, lease_until_utc, expires_utc) \
                     VALUES ($1, $2, 'held', gen_random_uuid(), 'in_flight', now(), now())",
                    &[&key.tenant_id, &key.key],
                )
                .await
                .unwrap();
        }
        let ascending = claims(&first, keys.clone());
        let descending = claims(&second, keys.iter().rev().cloned().collect());
        env.wait_for_lock_waiters(ingress::idempotency::CLAIMS_APPLICATION, 2)
            .await;
        holder.rollback().await.unwrap();
        let outcomes: Vec<ClaimOutcome> = ascending
            .await
            .unwrap()
            .into_iter()
            .chain(descending.await.unwrap())
            .map(|outcome| outcome.expect("no claim group may fail"))
            .collect();
        let claimed = outcomes
            .iter()
            .filter(|o| **o == ClaimOutcome::Claimed)
            .count();
        assert_eq!(claimed, 100, "each key is claimed once: {outcomes:?}");
    }
    assert_eq!(
        first.deadlocks() + second.deadlocks(),
        0,
        "the groups waited on each other in a cycle"
    );
}

/// Sorted statements cannot prevent every deadlock: a group completing key A and claiming key B
/// can meet, on another instance, a group completing B and claiming A. PostgreSQL aborts one;
/// that group is written again instead of failing its requests. The test holds both rows until
/// both groups wait for them, then lets them race, until a round deadlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_group_aborted_to_break_a_deadlock_is_written_again() {
    use ingress::idempotency::{ClaimKey, ClaimOutcome, ClaimStore, StoredAnswer};
    let env = TestEnv::new("claim_deadlock").await;
    // Each instance's completion and claim share a group.
    let (first, second, mut db) = two_lingering_instances(&env).await;
    let received_at = chrono::Utc::now();
    let answer = StoredAnswer {
        event_id: Uuid::from_u128(1),
        received_at,
        trace_id: [1; 16],
    };
    // Whether a round deadlocks depends on which group the released locks wake first; each
    // does in about half of them, so rounds go on until one did.
    for round in 0..12 {
        let key = |name: &str| ClaimKey {
            tenant_id: "acme".into(),
            key: format!("round-{round}-{name}"),
        };
        let (a, b) = (key("a"), key("b"));
        for (store, key) in [(&first, &a), (&second, &b)] {
            let outcome = store.claim(key.clone(), "hash".into(), answer).await;
            assert_eq!(outcome.unwrap(), ClaimOutcome::Claimed);
        }
        // Each instance completes its own key and, in the same group, claims the other's.
        let completes_and_claims = |store: &ClaimStore, own: ClaimKey, other: ClaimKey| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .complete(own, "hash".into(), received_at)
                    .await
                    .unwrap();
                store.claim(other, "hash".into(), answer).await
            })
        };
        let holder = db.transaction().await.unwrap();
        holder
            .execute(
                "SELECT 1 FROM idempotency WHERE idempotency_key = ANY($1) FOR UPDATE",
                &[&vec![a.key.clone(), b.key.clone()]],
            )
            .await
            .unwrap();
        let on_first = completes_and_claims(&first, a.clone(), b.clone());
        let on_second = completes_and_claims(&second, b, a);
        env.wait_for_lock_waiters(ingress::idempotency::CLAIMS_APPLICATION, 2)
            .await;
        holder.commit().await.unwrap();
        for outcome in [on_first.await.unwrap(), on_second.await.unwrap()] {
            assert!(
                matches!(
                    outcome.expect("no claim group may fail"),
                    ClaimOutcome::Replay(_) | ClaimOutcome::InFlight { .. }
                ),
                "round {round}"
            );
        }
        if first.deadlocks() + second.deadlocks() > 0 {
            break;
        }
    }
    assert!(
        first.deadlocks() + second.deadlocks() > 0,
        "no round deadlocked, so this test proved nothing"
    );
}

/// A request whose produce outlived its lease (a broker slower than the produce timeout, on
/// another gateway instance, say) must not complete or release the claim a retry took over:
/// its late release would let a third request send the event again while the retry is still
/// sending it, and its late completion would replay the retry's answer though the retry failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_lost_its_claim_to_a_takeover_leaves_the_new_claim_alone() {
    use ingress::idempotency::{ClaimOutcome, StoredAnswer};
    let env = TestEnv::new("takeover").await;
    let (store, key, _db) = claim_store(
        &env,
        "slow-broker",
        Duration::from_secs(3600),
        Duration::from_millis(300),
    )
    .await;
    let answer = |received_at| StoredAnswer {
        event_id: Uuid::from_u128(7),
        received_at,
        trace_id: [1; 16],
    };
    let first = answer(chrono::Utc::now());
    let claim = |answer| store.claim(key.clone(), "hash".into(), answer);
    assert_eq!(claim(first).await.unwrap(), ClaimOutcome::Claimed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The lease is over: a retry of the same payload takes the claim over.
    let retry = answer(chrono::Utc::now());
    assert_eq!(claim(retry).await.unwrap(), ClaimOutcome::Claimed);
    // The first request's produce fails at last: its release must not end the retry's lease.
    store
        .release(key.clone(), "hash".into(), first.received_at)
        .await
        .unwrap();
    let third = answer(chrono::Utc::now());
    assert!(
        matches!(claim(third).await.unwrap(), ClaimOutcome::InFlight { .. }),
        "the retry still holds the key"
    );
    // Nor may its late completion complete the retry's claim.
    store
        .complete(key.clone(), "hash".into(), first.received_at)
        .await
        .unwrap();
    assert!(matches!(
        claim(third).await.unwrap(),
        ClaimOutcome::InFlight { .. }
    ));
    // The retry's own completion does, and its answer is what replays.
    store
        .complete(key.clone(), "hash".into(), retry.received_at)
        .await
        .unwrap();
    match claim(third).await.unwrap() {
        ClaimOutcome::Replay(replayed) => {
            assert_eq!(
                replayed.received_at.timestamp_micros(),
                retry.received_at.timestamp_micros()
            )
        }
        other => panic!("expected the retry's answer replayed, got {other:?}"),
    }
}

/// A retention shorter than the lease (SENTINEL_IDEMPOTENCY_RETENTION_SECONDS under the produce
/// timeout and 5 s) must not free a key while its first request may still be writing: another
/// payload taking it then would make one key yield two events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_outlives_a_retention_shorter_than_its_lease() {
    use ingress::idempotency::{ClaimOutcome, StoredAnswer};
    let env = TestEnv::new("short_retention").await;
    let (store, key, db) = claim_store(
        &env,
        "short-retention",
        Duration::from_millis(100),
        Duration::from_secs(2),
    )
    .await;
    let answer = StoredAnswer {
        event_id: Uuid::from_u128(9),
        received_at: chrono::Utc::now(),
        trace_id: [2; 16],
    };
    assert_eq!(
        store
            .claim(key.clone(), "first".into(), answer)
            .await
            .unwrap(),
        ClaimOutcome::Claimed
    );
    // Past the retention, within the lease, with the purge running.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store
            .claim(key.clone(), "other".into(), answer)
            .await
            .unwrap(),
        ClaimOutcome::Mismatch,
        "another payload took a key whose first request may still be writing"
    );
    let kept: i64 = db
        .query_one("SELECT count(*) FROM idempotency", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "the purge kept the claim within its lease");
    // Once the lease is over too, the key is free.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(
        store.claim(key, "other".into(), answer).await.unwrap(),
        ClaimOutcome::Claimed
    );
}

/// An event the broker refuses for good (here: larger than the producer's record limit) leaves
/// nothing under its key, so the client's corrected event may use the same key; an event the
/// broker may still append keeps the key for its payload (see
/// `a_broker_failure_between_claim_and_ack_does_not_swallow_the_retry`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_broker_refused_frees_its_key_for_a_corrected_one() {
    let env = TestEnv::new("refused_frees_key").await;
    let sentinel = env
        .start_with(
            "up",
            "up",
            &[("SENTINEL_KAFKA_OPTIONS", "message.max.bytes=4000")],
        )
        .await;
    let base = sentinel.base_url.as_str();
    let client = reqwest::Client::new();
    let acme = ingest_token("acme");
    let mut too_large = event("acme", 1);
    too_large["payload"] = serde_json::json!({ "blob": "x".repeat(8_000) });
    problem_of(
        post_event(&client, base, &acme, "corrected", &too_large).await,
        413,
        "/problems/event-too-large",
        "an event over the producer's record limit",
    )
    .await;
    let corrected = event("acme", 2);
    let accepted = post_event(&client, base, &acme, "corrected", &corrected).await;
    assert_eq!(
        accepted.status(),
        202,
        "the key was held for a refused event"
    );
    assert!(accepted.headers().get("idempotent-replayed").is_none());
    let replayed = post_event(&client, base, &acme, "corrected", &corrected).await;
    assert_eq!(replayed.status(), 202);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(env.wait_for_events(1, Duration::from_secs(20)).await, 1);
}

/// At shutdown the gateway writes the completions of its last requests before it exits: else
/// their keys would stay in flight until the lease ends, and a retry then would send the event
/// again. Completions linger 2 s here, so one is surely still queued when SIGTERM comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_writes_the_last_requests_completions() {
    let env = TestEnv::new("drain").await;
    let mut sentinel = env
        .start_with(
            "ingress",
            "ingress",
            &[("SENTINEL_IDEMPOTENCY_LINGER_MS", "2000")],
        )
        .await;
    let client = reqwest::Client::new();
    let response = post_event(
        &client,
        &sentinel.base_url,
        &ingest_token("acme"),
        "the-last",
        &event("acme", 1),
    )
    .await;
    assert_eq!(response.status(), 202);
    let status = sentinel
        .terminate(Duration::from_secs(30))
        .expect("the gateway stops");
    assert!(status.success(), "{status:?}");
    let state: String = env
        .db()
        .await
        .query_one(
            "SELECT state FROM idempotency WHERE idempotency_key = 'the-last'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "completed");
}
