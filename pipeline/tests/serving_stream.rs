//! `GET /v1/stream` on the real broker and PostgreSQL: resume across forced reconnects under
//! load with no gap and no duplicate, filters, back-fill from the beginning, eviction of a slow
//! client without slowing the pipeline, and a thousand subscribers at once.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use ingress::Role;
use support::{envelope, ingest_token, post_event, token, SseMessage, SseReader, TestEnv};
use uuid::Uuid;

fn read_token(tenant: &str) -> String {
    token(tenant, &[Role::Read])
}

/// Posts `bodies` through the gateway, 8 at a time; every one must be accepted.
async fn post_all(base_url: &str, bodies: Vec<serde_json::Value>) {
    let client = reqwest::Client::new();
    stream::iter(bodies)
        .for_each_concurrent(8, |body| {
            let client = client.clone();
            async move {
                let tenant = body["tenantId"].as_str().unwrap().to_owned();
                let key = Uuid::new_v4().to_string();
                let response =
                    post_event(&client, base_url, &ingest_token(&tenant), &key, &body).await;
                assert_eq!(response.status(), 202, "event accepted");
            }
        })
        .await;
}

/// Event ids stored for `tenant`.
async fn stored_ids(env: &TestEnv, tenant: &str) -> BTreeSet<String> {
    env.db()
        .await
        .query(
            "SELECT id::text FROM events WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_across_forced_reconnects_under_load_has_no_gap_and_no_duplicate() {
    let env = TestEnv::new("sse_resume").await;
    let sentinel = env
        .start_with("up", "up", &[("SENTINEL_SSE_SLO_INTERVAL_MS", "300")])
        .await;
    let base_url = sentinel.base_url.clone();
    let client = reqwest::Client::new();
    let acme = read_token("acme");
    let mut reader = SseReader::open(&client, &base_url, &acme, "", None).await;

    // Load: 600 acme events, 200 globex events, and 20 acme events re-sent under their id with
    // another payload (conflicts, dead-lettered), posted while the subscriber reads.
    let mut bodies = Vec::new();
    let mut conflicts = Vec::new();
    for seq in 0..800 {
        let tenant = if seq % 4 == 3 { "globex" } else { "acme" };
        let body = envelope(
            Uuid::new_v4(),
            tenant,
            &format!("s-{}", seq % 7),
            seq,
            "2025-06-15T10:00:00Z",
        );
        if tenant == "acme" && conflicts.len() < 20 && seq % 10 == 0 {
            let mut conflict = body.clone();
            conflict["payload"]["seq"] = serde_json::json!(-1);
            conflicts.push(conflict);
        }
        bodies.push(body);
    }
    let load = tokio::spawn({
        let base_url = base_url.clone();
        async move {
            post_all(&base_url, bodies).await;
            post_all(&base_url, conflicts).await;
        }
    });

    let mut messages: Vec<SseMessage> = Vec::new();
    let mut last_id: Option<String> = None;
    let mut reconnects = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let events = messages.iter().filter(|m| m.event == "event").count();
        let dead = messages.iter().filter(|m| m.event == "dead_letter").count();
        if events == 600 && dead == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "feed incomplete: {events} events, {dead} dead letters"
        );
        // Force a reconnect after 150 and after 400 messages: once by header, once by query.
        let cut = (reconnects == 0 && messages.len() >= 150)
            || (reconnects == 1 && messages.len() >= 400);
        if cut {
            drop(reader);
            reconnects += 1;
            let id = last_id.clone().expect("messages carry ids");
            reader = if reconnects == 1 {
                SseReader::open(&client, &base_url, &acme, "", Some(&id)).await
            } else {
                let query = format!("?lastEventId={}", urlencode(&id));
                SseReader::open(&client, &base_url, &acme, &query, None).await
            };
            continue;
        }
        if let Some(message) = reader.next(Duration::from_secs(5)).await {
            last_id = message.id.clone().or(last_id);
            if message.event != "slo" {
                messages.push(message);
            } else {
                assert!(
                    message.json()["ingestionTotal"].as_i64().is_some(),
                    "slo carries counts"
                );
            }
        }
    }
    load.await.unwrap();
    assert_eq!(reconnects, 2);

    let received: Vec<String> = messages
        .iter()
        .filter(|m| m.event == "event")
        .map(|m| {
            let data = m.json();
            assert_eq!(data["tenantId"], "acme", "only the token's tenant");
            data["eventId"].as_str().unwrap().to_owned()
        })
        .collect();
    let unique: BTreeSet<String> = received.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        received.len(),
        "no duplicate across reconnects"
    );
    assert_eq!(
        unique,
        stored_ids(&env, "acme").await,
        "no gap: every stored acme event"
    );
    for dead in messages.iter().filter(|m| m.event == "dead_letter") {
        let data = dead.json();
        assert_eq!(data["reason"], "duplicate_event_id_conflict");
        assert!(
            unique.contains(data["eventId"].as_str().unwrap()),
            "the conflict names the stored event"
        );
    }
    // Nothing more arrives for acme (globex events keep no one waiting).
    assert!(
        reader
            .next(Duration::from_millis(500))
            .await
            .is_none_or(|m| m.event == "slo"),
        "no extra message"
    );
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_backfill_from_the_beginning() {
    let env = TestEnv::new("sse_filters").await;
    let sentinel = env.start("up", "up").await;
    let bodies: Vec<_> = (0..120)
        .map(|seq| {
            envelope(
                Uuid::new_v4(),
                "acme",
                &format!("s-{}", seq % 3),
                seq,
                "2025-06-15T10:00:00Z",
            )
        })
        .collect();
    post_all(&sentinel.base_url, bodies).await;
    assert_eq!(env.wait_for_events(120, Duration::from_secs(30)).await, 120);
    let client = reqwest::Client::new();

    // "v1:" names no partition: every partition from its beginning.
    let query = "?type=order.created&streamKey=s-1&source=service-2";
    let mut reader = SseReader::open(
        &client,
        &sentinel.base_url,
        &read_token("acme"),
        query,
        Some("v1:"),
    )
    .await;
    let expected: BTreeSet<String> = env
        .db()
        .await
        .query(
            "SELECT id::text FROM events WHERE tenant_id = 'acme' AND type = 'order.created' \
             AND stream_key = 's-1' AND source = 'service-2'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!expected.is_empty(), "the filter matches something");
    let mut got = BTreeSet::new();
    while got.len() < expected.len() {
        let message = reader
            .next(Duration::from_secs(10))
            .await
            .expect("back-filled message");
        let data = message.json();
        assert_eq!(
            (
                data["type"].as_str(),
                data["streamKey"].as_str(),
                data["source"].as_str()
            ),
            (Some("order.created"), Some("s-1"), Some("service-2"))
        );
        assert_eq!(
            data,
            rendered_by_postgres(&env, data["eventId"].as_str().unwrap()).await,
            "the message is the stored row, every field as PostgreSQL renders it in JSON"
        );
        assert!(
            got.insert(data["eventId"].as_str().unwrap().to_owned()),
            "no duplicate"
        );
    }
    assert_eq!(got, expected);

    // Another tenant's token sees none of it.
    let mut other = SseReader::open(
        &client,
        &sentinel.base_url,
        &read_token("globex"),
        "",
        Some("v1:"),
    )
    .await;
    assert!(
        other.next(Duration::from_millis(800)).await.is_none(),
        "nothing of acme for globex"
    );

    // A live filtered subscriber gets only the matching new event.
    let mut live = SseReader::open(
        &client,
        &sentinel.base_url,
        &read_token("acme"),
        "?streamKey=s-9",
        None,
    )
    .await;
    let other_stream = envelope(Uuid::new_v4(), "acme", "s-8", 0, "2025-06-15T10:00:00Z");
    let wanted = envelope(Uuid::new_v4(), "acme", "s-9", 1, "2025-06-15T10:00:00Z");
    post_all(&sentinel.base_url, vec![other_stream, wanted.clone()]).await;
    let message = live
        .next(Duration::from_secs(10))
        .await
        .expect("live message");
    assert_eq!(message.event, "event");
    assert_eq!(message.json()["eventId"], wanted["eventId"]);
    assert_eq!(
        message.json(),
        rendered_by_postgres(&env, wanted["eventId"].as_str().unwrap()).await,
        "a live message is the stored row too"
    );

    // Errors are problems.
    let response = client
        .get(format!("{}/v1/stream", sentinel.base_url))
        .bearer_auth(read_token("acme"))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/invalid-last-event-id");
    let response = client
        .get(format!("{}/v1/stream", sentinel.base_url))
        .bearer_auth(ingest_token("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "the read role is needed");
    // A parameter given twice is a problem too, and only after the token is checked.
    let twice = format!("{}/v1/stream?source=a&source=b", sentinel.base_url);
    let response = client
        .get(&twice)
        .bearer_auth(read_token("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/invalid-request", "{problem}");
    let response = client.get(&twice).send().await.unwrap();
    assert_eq!(
        response.status(),
        401,
        "no token: 401 before the parameters"
    );
}

/// The stored event `id` as a feed message, rendered by PostgreSQL's own `json_build_object`
/// (in UTC): the reference the feed's messages, rendered in Sentinel, must equal field by field.
async fn rendered_by_postgres(env: &TestEnv, id: &str) -> serde_json::Value {
    let db = env.db().await;
    db.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let text: String = db
        .query_one(
            "SELECT json_build_object('eventId', id, 'tenantId', tenant_id, 'source', source, \
               'type', type, 'streamKey', stream_key, 'timestampUtc', timestamp_utc, \
               'schemaVersion', schema_version, 'payload', payload_jsonb, \
               'receivedUtc', received_utc, 'processedUtc', processed_utc, \
               'traceId', trace_id)::text FROM events WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    serde_json::from_str(&text).unwrap()
}

/// Big events, so that a client that does not read fills the socket buffers quickly.
fn big_batch(tenant: &str, count: usize) -> Vec<serde_json::Value> {
    let padding = "x".repeat(8_000);
    (0..count)
        .map(|seq| {
            let mut body = envelope(Uuid::new_v4(), tenant, "big", seq, "2025-06-15T10:00:00Z");
            body["payload"]["padding"] = serde_json::json!(padding);
            body
        })
        .collect()
}

/// Seconds from the first receive to the last processed event of `tenant`.
async fn processing_span(env: &TestEnv, tenant: &str) -> f64 {
    env.db()
        .await
        .query_one(
            "SELECT EXTRACT(EPOCH FROM max(processed_utc) - min(received_utc))::float8 \
             FROM events WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_evicted_and_the_pipeline_keeps_its_pace() {
    let env = TestEnv::new("sse_slow").await;
    let sentinel = env
        .start_with("up", "up", &[("SENTINEL_SSE_BUFFER", "4")])
        .await;
    // Baseline: the load alone.
    post_all(&sentinel.base_url, big_batch("baseline", 1_500)).await;
    assert_eq!(
        env.wait_for_events(1_500, Duration::from_secs(60)).await,
        1_500
    );
    let baseline = processing_span(&env, "baseline").await;

    // The same load with a subscriber that reads nothing: a raw socket with a tiny buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = sentinel
        .base_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        read_token("slow")
    );
    tokio::io::AsyncWriteExt::write_all(&mut stalled, request.as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    post_all(&sentinel.base_url, big_batch("slow", 1_500)).await;
    assert_eq!(
        env.wait_for_events(3_000, Duration::from_secs(60)).await,
        3_000
    );
    let with_stalled = processing_span(&env, "slow").await;
    assert!(
        with_stalled <= baseline * 2.0 + 2.0,
        "a stalled subscriber slowed the pipeline: {with_stalled:.2}s against {baseline:.2}s"
    );

    // It is evicted whichever comes first: falling 4 commits behind, or not reading for the
    // server's 10 s patience (the commits may be few and large). Once it reads, it finds some
    // events, then `lagged`, then the end.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut received = Vec::new();
    let read_all = async {
        let mut chunk = vec![0u8; 65_536];
        let mut lagged = false;
        loop {
            match tokio::io::AsyncReadExt::read(&mut stalled, &mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // Only the new bytes (and a marker's length before them) are searched:
                    // megabytes may be buffered, read a few kilobytes at a time.
                    let from = received.len().saturating_sub(12);
                    received.extend_from_slice(&chunk[..n]);
                    lagged = lagged || received[from..].windows(13).any(|w| w == b"event: lagged");
                    if lagged && received.ends_with(b"0\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("the evicted stream ends");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.contains("event: event"),
        "it got events before falling behind"
    );
    assert!(text.contains("event: lagged"), "it was told it lagged");
    assert!(sentinel.metric("sse_evictions_total").await >= 1.0);

    // Resuming from the `lagged` message's id loses nothing: what it got before and what it
    // gets after are every event of the tenant, once.
    let messages = sse_messages(&dechunked(&received));
    let mut got: std::collections::HashSet<String> = messages
        .iter()
        .filter(|(event, _, _)| event == "event")
        .map(|(_, _, data)| event_id_of(data))
        .collect();
    let resume_from = messages
        .iter()
        .find(|(event, _, _)| event == "lagged")
        .and_then(|(_, id, _)| id.clone())
        .expect("the lagged message has an id");
    let client = reqwest::Client::new();
    let mut resumed = SseReader::open(
        &client,
        &sentinel.base_url,
        &read_token("slow"),
        "",
        Some(&resume_from),
    )
    .await;
    while got.len() < 1_500 {
        let Some(message) = resumed.next(Duration::from_secs(10)).await else {
            break;
        };
        if message.event == "event" {
            got.insert(event_id_of(&message.data));
        }
    }
    assert_eq!(
        got.len(),
        1_500,
        "every event, before the eviction or after the resume"
    );
}

/// The body of a raw HTTP/1.1 response with chunked transfer encoding, chunks joined.
fn dechunked(response: &[u8]) -> Vec<u8> {
    let start = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the response has headers")
        + 4;
    let mut rest = &response[start..];
    let mut body = Vec::new();
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_text = std::str::from_utf8(&rest[..line_end]).expect("a chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("a hexadecimal chunk size");
        if size == 0 || rest.len() < line_end + 2 + size {
            break;
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 2 + size + 2..];
    }
    body
}

/// `(event, id, data)` of every SSE message in `body`.
fn sse_messages(body: &[u8]) -> Vec<(String, Option<String>, String)> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|block| {
            let (mut event, mut id, mut data) = ("message".to_owned(), None, None::<String>);
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event = value.to_owned(),
                    "id" => id = Some(value.to_owned()),
                    "data" => data = Some(value.to_owned()),
                    _ => {}
                }
            }
            data.map(|data| (event, id, data))
        })
        .collect()
}

fn event_id_of(data: &str) -> String {
    let data: serde_json::Value = serde_json::from_str(data).expect("SSE data is JSON");
    data["eventId"].as_str().expect("an event id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_each_get_every_event() {
    let env = TestEnv::new("sse_many").await;
    let sentinel = env.start("up", "up").await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let acme = read_token("acme");
    let readers: Vec<SseReader> = stream::iter(0..1_000)
        .map(|_| SseReader::open(&client, &sentinel.base_url, &acme, "", None))
        .buffer_unordered(50)
        .collect()
        .await;
    assert_eq!(sentinel.metric("sse_subscribers").await, 1_000.0);
    let bodies: Vec<_> = (0..3)
        .map(|seq| envelope(Uuid::new_v4(), "acme", "s", seq, "2025-06-15T10:00:00Z"))
        .collect();
    let expected: BTreeSet<String> = bodies
        .iter()
        .map(|b| b["eventId"].as_str().unwrap().to_owned())
        .collect();
    post_all(&sentinel.base_url, bodies).await;
    let results: Vec<BTreeSet<String>> = stream::iter(readers)
        .map(|mut reader| async move {
            let mut got = BTreeSet::new();
            while got.len() < 3 {
                let message = reader.next(Duration::from_secs(30)).await.expect("message");
                if message.event == "event" {
                    got.insert(message.json()["eventId"].as_str().unwrap().to_owned());
                }
            }
            got
        })
        .buffer_unordered(1_000)
        .collect()
        .await;
    assert_eq!(results.len(), 1_000);
    assert!(
        results.iter().all(|got| *got == expected),
        "every subscriber got the three events"
    );
}

/// SIGTERM with a subscriber connected: the feed ends its response (the client resumes
/// elsewhere with Last-Event-ID) and the process stops cleanly instead of waiting for the
/// client forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_subscriber_connected_stops_cleanly() {
    let env = TestEnv::new("stream_shutdown").await;
    let mut sentinel = env.start("up", "up").await;
    let client = reqwest::Client::new();
    let mut subscription = client
        .get(format!("{}/v1/stream", sentinel.base_url))
        .bearer_auth(read_token("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(subscription.status(), 200);
    let status = sentinel
        .terminate(Duration::from_secs(20))
        .expect("sentinel still running 20 s after SIGTERM with a subscriber connected");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        sentinel.log()
    );
    // The response ended: reading it to its end finishes (whatever the keep-alive sent).
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = subscription.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the feed response did not end");
}

/// A feed opened with a token ends when the token does, with a message whose id resumes it;
/// a valid token then resumes where it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_ends_when_its_token_expires_and_resumes_with_a_new_one() {
    let env = TestEnv::new("sse_expiry").await;
    let sentinel = env
        .start_with("up", "up", &[("SENTINEL_JWT_LEEWAY_SECONDS", "0")])
        .await;
    let base = sentinel.base_url.as_str();
    let client = reqwest::Client::new();
    let short = ingress::auth::mint_hs256(
        support::JWT_SECRET,
        "acme",
        &[Role::Read],
        Duration::from_secs(3),
        None,
        None,
    )
    .unwrap();
    let mut feed = SseReader::open(&client, base, &short, "", None).await;
    let before = envelope(Uuid::new_v4(), "acme", "s", 1, "2025-06-15T10:00:00Z");
    let posted = post_event(&client, base, &ingest_token("acme"), "before", &before).await;
    assert_eq!(posted.status(), 202);
    let first = feed.next(Duration::from_secs(20)).await.expect("the event");
    assert_eq!(first.event, "event");
    assert_eq!(first.json()["eventId"], before["eventId"]);
    let ended = feed
        .next(Duration::from_secs(10))
        .await
        .expect("a message when the token expires");
    assert_eq!(ended.event, "token_expired");
    assert!(
        feed.next(Duration::from_secs(5)).await.is_none(),
        "the stream ends"
    );
    // A fresh token resumes from the last id: only what came after.
    let after = envelope(Uuid::new_v4(), "acme", "s", 2, "2025-06-15T10:00:01Z");
    let posted = post_event(&client, base, &ingest_token("acme"), "after", &after).await;
    assert_eq!(posted.status(), 202);
    let mut resumed =
        SseReader::open(&client, base, &read_token("acme"), "", ended.id.as_deref()).await;
    let next = resumed
        .next(Duration::from_secs(20))
        .await
        .expect("the next event");
    assert_eq!(next.json()["eventId"], after["eventId"]);
}

/// Until the hub has read where it broadcasts from, a new subscriber is answered 503 rather than
/// subscribed: what commits between its back-fill and the hub's first read would reach it
/// neither way. The test holds `source_offsets` so that the hub's first read waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_waits_for_the_hub_to_start_and_is_refused_if_it_does_not() {
    let env = TestEnv::new("sse_hub_start").await;
    let mut db = env.db().await;
    sinks::postgres::migrate(&mut db).await.unwrap();
    let hold = db.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE source_offsets IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let sentinel = env.start("ingress", "ingress").await;
    let client = reqwest::Client::new();
    let open = || {
        client
            .get(format!(
                "{}/v1/stream?lastEventId={}",
                sentinel.base_url,
                urlencode("v1:0=0")
            ))
            .bearer_auth(read_token("acme"))
            .send()
    };
    let refused = open().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("has not reached PostgreSQL yet"),
        "{problem}"
    );
    hold.rollback().await.unwrap();
    let subscribed = open().await.unwrap();
    assert_eq!(subscribed.status(), 200);
}

/// A back-fill moves the subscriber's position past every row it examined, not only past those
/// its filter admitted: a subscriber filtering for a rare kind resumes after them, instead of
/// scanning them again at every resume (and, lagging behind a long scan, never getting ahead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_backfill_moves_the_position_past_what_it_left_out() {
    let env = TestEnv::new("sse_filtered_position").await;
    let sentinel = env
        .start_with("up", "up", &[("SENTINEL_JWT_LEEWAY_SECONDS", "0")])
        .await;
    let base = sentinel.base_url.as_str();
    let client = reqwest::Client::new();
    let bodies: Vec<serde_json::Value> = (0..20)
        .map(|i| envelope(Uuid::new_v4(), "acme", "s", i, "2025-06-15T10:00:00Z"))
        .collect();
    post_all(base, bodies).await;
    assert_eq!(env.wait_for_events(20, Duration::from_secs(30)).await, 20);
    let db = env.db().await;
    let committed: i64 = db
        .query_one(
            "SELECT sum(next_offset)::bigint FROM source_offsets WHERE topic = $1",
            &[&env.raw_topic()],
        )
        .await
        .unwrap()
        .get(0);
    // A feed whose filter admits none of them, from the beginning, whose token soon expires:
    // the id of its last message is where it resumes.
    let short = ingress::auth::mint_hs256(
        support::JWT_SECRET,
        "acme",
        &[Role::Read],
        Duration::from_secs(2),
        None,
        None,
    )
    .unwrap();
    let mut feed = SseReader::open(&client, base, &short, "?type=never.sent", Some("v1:")).await;
    let ended = feed
        .next(Duration::from_secs(10))
        .await
        .expect("a message when the token expires");
    assert_eq!(ended.event, "token_expired");
    let resumes_at: i64 = queries::feed::FeedPosition::parse(ended.id.as_deref().unwrap())
        .unwrap()
        .0
        .values()
        .sum();
    assert_eq!(resumes_at, committed, "{:?}", ended.id);
}

/// An SLO window updated by a transaction that began before the last update the hub saw (its
/// `updated_utc` is older) still reaches the feed; a window whose counts did not change is not
/// sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_slo_window_stamped_before_the_newest_seen_is_still_broadcast() {
    let env = TestEnv::new("sse_slo_late").await;
    let sentinel = env
        .start_with(
            "ingress",
            "ingress",
            &[("SENTINEL_SSE_SLO_INTERVAL_MS", "100")],
        )
        .await;
    let client = reqwest::Client::new();
    let mut feed =
        SseReader::open(&client, &sentinel.base_url, &read_token("acme"), "", None).await;
    let db = env.db().await;
    let window = |start: &str, age_seconds: f64| {
        format!(
            "INSERT INTO slo_samples (window_start_utc, ingestion_good, ingestion_total, \
                freshness_good, freshness_total, updated_utc) \
             VALUES ('{start}', 1, 1, 0, 0, now() - interval '{age_seconds} seconds')"
        )
    };
    db.batch_execute(&window("2026-12-05T10:01:00Z", 0.0))
        .await
        .unwrap();
    let first = next_slo(&mut feed).await.expect("the first window");
    assert!(first.starts_with("2026-12-05T10:01:00"), "{first}");
    // Committed now, stamped 10 s ago: before the newest stamp the hub has seen.
    db.batch_execute(&window("2026-12-05T10:00:00Z", 10.0))
        .await
        .unwrap();
    let late = next_slo(&mut feed).await.expect("the late window");
    assert!(late.starts_with("2026-12-05T10:00:00"), "{late}");
    assert!(
        feed.next(Duration::from_secs(1)).await.is_none(),
        "unchanged windows are not sent again"
    );
}

/// The window start of the next message of `feed`, which must be an SLO window; `None` when
/// none comes within 10 s.
async fn next_slo(feed: &mut SseReader) -> Option<String> {
    let message = feed.next(Duration::from_secs(10)).await?;
    assert_eq!(message.event, "slo");
    Some(
        message.json()["windowStartUtc"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

/// Large events are read in pages of about `PAGE_BYTES`, not of a fixed number of rows: a
/// back-fill over more than a page of them delivers each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_large_events_spans_pages_without_gap_or_repeat() {
    let env = TestEnv::new("sse_large").await;
    let sentinel = env.start("up", "up").await;
    let base = sentinel.base_url.as_str();
    let client = reqwest::Client::new();
    let count = queries::feed::PAGE_BYTES / 600_000 + 3;
    let mut posted = Vec::new();
    for i in 0..count {
        let mut body = envelope(Uuid::new_v4(), "acme", "big", i, "2025-06-15T10:00:00Z");
        body["payload"] = serde_json::json!({ "blob": "x".repeat(600_000), "seq": i });
        let key = format!("big-{i}");
        let response = post_event(&client, base, &ingest_token("acme"), &key, &body).await;
        assert_eq!(response.status(), 202);
        posted.push(body["eventId"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        env.wait_for_events(count as i64, Duration::from_secs(60))
            .await,
        count as i64
    );
    let mut feed = SseReader::open(&client, base, &read_token("acme"), "", Some("v1:")).await;
    let mut received = Vec::new();
    while received.len() < count {
        let message = feed
            .next(Duration::from_secs(20))
            .await
            .expect("every event");
        if message.event == "event" {
            received.push(message.json()["eventId"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(received, posted, "each event once, in the order posted");
}
