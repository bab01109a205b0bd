//! The dataflow on records written straight to the raw topic (as any producer could):
//! de-duplication within a run and across a restart, conflicts and poison records
//! dead-lettered with their reason and original bytes, and cross-partition conflicts.

mod support;

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use support::{envelope, TestEnv};
use uuid::Uuid;

async fn produce(producer: &FutureProducer, topic: &str, partition: i32, value: &[u8]) {
    producer
        .send(
            FutureRecord::<(), [u8]>::to(topic)
                .partition(partition)
                .payload(value),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
}

async fn dead_letters(env: &TestEnv) -> Vec<(String, Vec<u8>)> {
    env.db()
        .await
        .query("SELECT reason_code, original FROM dead_letter ORDER BY source_partition, source_offset", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Reads `count` records from every partition of `topic`: (headers, value).
async fn read_topic(
    topic: &str,
    count: usize,
) -> Vec<(std::collections::BTreeMap<String, String>, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .set("group.id", "dlq-check")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while records.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {count} records on {topic}",
            records.len()
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push((headers, message.payload().unwrap_or_default().to_vec()));
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_dropped_and_conflicts_and_poison_dead_lettered_across_restarts() {
    let env = TestEnv::new("dedup").await;
    let topic = env.raw_topic();
    let mut sentinel = env.start("process", "process-1").await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .create()
        .unwrap();

    let first = envelope(Uuid::new_v4(), "acme", "s-1", 1, "2025-06-15T10:00:00Z");
    let first_bytes = serde_json::to_vec(&first).unwrap();
    let mut conflicting = first.clone();
    conflicting["payload"]["seq"] = serde_json::json!(999);
    let conflicting_bytes = serde_json::to_vec(&conflicting).unwrap();
    produce(&producer, &topic, 0, &first_bytes).await;
    produce(&producer, &topic, 0, &first_bytes).await; // a duplicate
    produce(&producer, &topic, 0, &conflicting_bytes).await; // same id, other payload
    produce(&producer, &topic, 0, b"\xff not json").await; // poison
    produce(&producer, &topic, 0, br#"{"eventId": 5}"#).await; // not an envelope
    env.wait_for_consumed(5).await;
    assert_eq!(env.event_count(&env.db().await).await, 1);
    assert_eq!(
        sentinel
            .metric(r#"processor_events_total{result="duplicate"}"#)
            .await,
        1.0,
        "the duplicate is counted"
    );
    // The counters are exact: one stored, one duplicate, three dead letters by reason.
    for (sample, expected) in [
        (r#"processor_events_total{result="success"}"#, 1.0),
        (r#"processor_events_total{result="dlq"}"#, 3.0),
        (
            r#"dlq_events_total{reason="duplicate_event_id_conflict"}"#,
            1.0,
        ),
        (r#"dlq_events_total{reason="undecodable"}"#, 1.0),
        (r#"dlq_events_total{reason="invalid_envelope"}"#, 1.0),
        (r#"dlq_events_total{reason="schema_violation"}"#, 0.0),
    ] {
        assert_eq!(sentinel.metric(sample).await, expected, "{sample}");
    }
    // The stored event is remembered by the worker that owns its partition.
    let remembered = sentinel.metric(r#"dedup_state_entries{worker="0"}"#).await
        + sentinel.metric(r#"dedup_state_entries{worker="1"}"#).await;
    assert!(
        remembered >= 1.0,
        "the dedup state size is reported: {remembered}"
    );

    // After a restart the stored event is remembered: its duplicate is dropped again and a
    // conflict on another partition is caught when it is stored.
    sentinel.kill();
    let sentinel = env.start("process", "process-2").await;
    produce(&producer, &topic, 0, &first_bytes).await;
    let mut elsewhere = first.clone();
    elsewhere["payload"]["seq"] = serde_json::json!(1000);
    produce(
        &producer,
        &topic,
        1,
        &serde_json::to_vec(&elsewhere).unwrap(),
    )
    .await;
    let second = envelope(Uuid::new_v4(), "acme", "s-2", 2, "2025-06-15T10:00:00Z");
    produce(&producer, &topic, 1, &serde_json::to_vec(&second).unwrap()).await;
    env.wait_for_consumed(8).await;
    assert_eq!(
        env.event_count(&env.db().await).await,
        2,
        "only the two distinct events are stored"
    );
    assert_eq!(
        sentinel
            .metric(r#"processor_events_total{result="duplicate"}"#)
            .await,
        1.0,
        "the duplicate after the restart is dropped by the seeded de-duplication"
    );
    let dead = dead_letters(&env).await;
    let reasons: Vec<&str> = dead.iter().map(|(reason, _)| reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "duplicate_event_id_conflict",
            "undecodable",
            "invalid_envelope",
            "duplicate_event_id_conflict"
        ],
        "every poison record is dead-lettered with its reason"
    );
    assert_eq!(
        dead[0].1, conflicting_bytes,
        "the original bytes are kept exactly"
    );
    assert_eq!(dead[1].1, b"\xff not json");

    // The same dead letters are on the dead-letter topic: original value, reason in headers.
    let on_topic = read_topic(&format!("{}events.dlq.v1", env.topic_prefix), 4).await;
    let mut topic_reasons: Vec<(String, Vec<u8>)> = on_topic
        .iter()
        .map(|(headers, value)| (headers["sentinel-dlq-reason"].clone(), value.clone()))
        .collect();
    topic_reasons.sort();
    let mut table_reasons = dead.clone();
    table_reasons.sort();
    assert_eq!(
        topic_reasons, table_reasons,
        "the topic holds what the table holds"
    );
    assert!(on_topic
        .iter()
        .all(|(headers, _)| headers["sentinel-dlq-source"].starts_with(&env.raw_topic())));
    let _ = producer.flush(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_checked_against_schemas_reloaded_from_their_directory() {
    let env = TestEnv::new("schemas").await;
    let dir = env.log_dir.join("schemas");
    std::fs::create_dir_all(dir.join("acme")).unwrap();
    let schema = |required: &str| {
        serde_json::json!({
            "x-sentinel-tenant": "*",
            "x-sentinel-type": "order.created",
            "x-sentinel-schema-version": 1,
            "type": "object",
            "required": [required],
            "properties": {"seq": {"type": "integer"}}
        })
        .to_string()
    };
    std::fs::write(dir.join("acme").join("order.json"), schema("seq")).unwrap();
    let dir_text = dir.display().to_string();
    let _sentinel = env
        .start_with(
            "process",
            "process",
            &[
                ("SENTINEL_SCHEMA_DIR", &dir_text),
                ("SENTINEL_UNKNOWN_TYPE_POLICY", "dead_letter"),
                ("SENTINEL_SCHEMA_RELOAD_SECONDS", "1"),
            ],
        )
        .await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .create()
        .unwrap();
    let topic = env.raw_topic();
    // envelope(): even seq → order.created, odd → order.paid (no schema: dead-lettered);
    // schemaVersion is 1 + seq % 3.
    let valid = envelope(Uuid::new_v4(), "acme", "s", 0, "2025-06-15T10:00:00Z");
    let mut invalid = envelope(Uuid::new_v4(), "acme", "s", 6, "2025-06-15T10:00:00Z");
    invalid["payload"]["seq"] = serde_json::json!("six");
    let unknown = envelope(Uuid::new_v4(), "acme", "s", 3, "2025-06-15T10:00:00Z");
    for body in [&valid, &invalid, &unknown] {
        produce(&producer, &topic, 0, &serde_json::to_vec(body).unwrap()).await;
    }
    env.wait_for_consumed(3).await;
    assert_eq!(env.event_count(&env.db().await).await, 1);
    let reasons: Vec<String> = dead_letters(&env)
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(reasons, ["schema_violation", "unknown_event_type"]);

    // A changed schema applies without a restart.
    std::fs::write(dir.join("acme").join("order.json"), schema("mustHave")).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now_invalid = envelope(Uuid::new_v4(), "acme", "s", 12, "2025-06-15T10:00:00Z");
    produce(
        &producer,
        &topic,
        0,
        &serde_json::to_vec(&now_invalid).unwrap(),
    )
    .await;
    env.wait_for_consumed(4).await;
    let reasons: Vec<String> = dead_letters(&env)
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(
        reasons,
        ["schema_violation", "unknown_event_type", "schema_violation"]
    );
    let message: String = env
        .db()
        .await
        .query_one(
            "SELECT message FROM dead_letter ORDER BY source_offset DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(message.contains("mustHave"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_load_yields_exact_rows_in_every_table() {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    let env = TestEnv::new("mixed").await;
    let _sentinel = env.start("process", "process").await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    let mut unique = 0;
    let mut invalid = 0;
    for seq in 0..1000usize {
        let tenant = ["acme", "globex", "initech"][seq % 3];
        let stream = format!("stream-{}", seq % 25);
        // Shuffled event times: streams receive them out of order.
        let timestamp = format!(
            "2025-06-15T10:{:02}:{:02}Z",
            rng.random_range(0..60),
            rng.random_range(0..60)
        );
        let key = format!("{tenant}|{stream}");
        let roll = rng.random_range(0..100);
        if roll < 2 {
            let mut bad = envelope(Uuid::new_v4(), tenant, &stream, seq, &timestamp);
            bad["schemaVersion"] = serde_json::json!(0);
            records.push((key, serde_json::to_vec(&bad).unwrap()));
            invalid += 1;
            continue;
        }
        let bytes = serde_json::to_vec(&envelope(Uuid::new_v4(), tenant, &stream, seq, &timestamp))
            .unwrap();
        records.push((key.clone(), bytes.clone()));
        unique += 1;
        if roll < 7 {
            records.push((key, bytes)); // a duplicate
        }
    }
    // Duplicates land later in the topic, sometimes right after their original.
    let tail_start = records.len() / 2;
    records[tail_start..].shuffle(&mut rng);
    let topic = env.raw_topic();
    for (key, value) in &records {
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&topic)
                    .key(key.as_str())
                    .payload(value.as_slice()),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    env.wait_for_consumed(records.len() as i64).await;
    let db = env.db().await;
    assert_eq!(
        env.event_count(&db).await,
        unique as i64,
        "events: each unique valid event once"
    );
    let dead: Vec<String> = dead_letters(&env)
        .await
        .into_iter()
        .map(|(reason, _)| reason)
        .collect();
    assert_eq!(dead.len(), invalid, "dead_letter: each invalid event");
    assert!(
        dead.iter().all(|reason| reason == "invalid_envelope"),
        "{dead:?}"
    );
    let (mismatches, streams) = env.stream_state_check(&db).await;
    assert_eq!(
        mismatches, 0,
        "stream_state equals a recomputation over events"
    );
    assert_eq!(streams, 75, "3 tenants × 25 streams");
    let (_, _, fresh_good, fresh_total) = env.slo_totals(0).await;
    assert_eq!(
        fresh_total, unique as i64,
        "slo_samples: one freshness sample per stored event"
    );
    assert!(fresh_good <= fresh_total);
    let windows: i64 = db
        .query_one(
            "SELECT count(*) FROM slo_samples WHERE freshness_total > 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(windows >= 1);
}

/// A batch that PostgreSQL refuses for one row is written row by row; in that path too, an id
/// stored before with another payload is a conflict dead letter, never a skipped copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_postgres_rejects_is_isolated_and_its_neighbours_keep_their_verdicts() {
    use rdkafka::message::{Header, OwnedHeaders};

    let env = TestEnv::new("isolate").await;
    let topic = env.raw_topic();
    let sentinel = env.start("process", "process-1").await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .set("linger.ms", "50")
        .create()
        .unwrap();

    let stored = envelope(Uuid::new_v4(), "acme", "s-1", 1, "2025-06-15T10:00:00Z");
    produce(&producer, &topic, 0, &serde_json::to_vec(&stored).unwrap()).await;
    env.wait_for_consumed(1).await;

    // On the other partition (the other worker, which has not seen the stored id), in one
    // produce request and so one fetch and one batch: the stored id with another payload,
    // an event whose idempotency key PostgreSQL cannot store (a NUL byte), and a good event.
    let mut conflicting = stored.clone();
    conflicting["payload"]["seq"] = serde_json::json!(999);
    let conflicting_bytes = serde_json::to_vec(&conflicting).unwrap();
    let rejected = envelope(Uuid::new_v4(), "acme", "s-2", 1, "2025-06-15T10:00:00Z");
    let rejected_bytes = serde_json::to_vec(&rejected).unwrap();
    let good = envelope(Uuid::new_v4(), "acme", "s-3", 1, "2025-06-15T10:00:00Z");
    let good_bytes = serde_json::to_vec(&good).unwrap();
    let nul_key = OwnedHeaders::new().insert(Header {
        key: operators::headers::IDEMPOTENCY_KEY,
        value: Some("key-with-\0-inside"),
    });
    let sends = [
        producer.send_result(
            FutureRecord::<(), [u8]>::to(&topic)
                .partition(1)
                .payload(&conflicting_bytes[..]),
        ),
        producer.send_result(
            FutureRecord::<(), [u8]>::to(&topic)
                .partition(1)
                .payload(&rejected_bytes[..])
                .headers(nul_key),
        ),
        producer.send_result(
            FutureRecord::<(), [u8]>::to(&topic)
                .partition(1)
                .payload(&good_bytes[..]),
        ),
    ];
    for send in sends {
        send.map_err(|(e, _)| e)
            .expect("enqueue")
            .await
            .expect("delivery")
            .expect("acknowledged");
    }
    env.wait_for_consumed(4).await;

    let db = env.db().await;
    assert_eq!(
        sentinel
            .metric(r#"dlq_events_total{reason="database_rejected"}"#)
            .await,
        1.0,
        "the NUL key made PostgreSQL refuse its row, so the batch was written row by row"
    );
    let ids: Vec<Uuid> = db
        .query("SELECT id FROM events ORDER BY received_utc", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let stored_id: Uuid = stored["eventId"].as_str().unwrap().parse().unwrap();
    let good_id: Uuid = good["eventId"].as_str().unwrap().parse().unwrap();
    assert_eq!(ids.len(), 2, "the first event and the good one: {ids:?}");
    assert!(
        ids.contains(&stored_id) && ids.contains(&good_id),
        "{ids:?}"
    );
    let mut dead = dead_letters(&env).await;
    dead.sort();
    let mut expected = vec![
        ("database_rejected".to_owned(), rejected_bytes.clone()),
        ("duplicate_event_id_conflict".to_owned(), conflicting_bytes),
    ];
    expected.sort();
    assert_eq!(
        dead, expected,
        "the conflict is dead-lettered with its original bytes, not skipped as a copy"
    );

    let before_replay: i64 = db
        .query_one(
            "SELECT count(*) FROM stream_state WHERE stream_key = 's-2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        before_replay, 0,
        "a stream with no stored event has no state"
    );
    let (first_count, first_payload): (i64, serde_json::Value) = {
        let row = db
            .query_one(
                "SELECT event_count, last_payload_jsonb FROM stream_state WHERE stream_key = 's-1'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (first_count, &first_payload),
        (1, &stored["payload"]),
        "the conflicting copy is neither counted nor shown"
    );

    // The refused event sent again with its cause mended (here: without the NUL key; a replay
    // through the API would send the key as the dead letter stored it, the NUL made U+FFFD): it
    // is stored, not dropped as a duplicate of itself, which de-duplication remembered.
    produce(&producer, &topic, 1, &rejected_bytes).await;
    env.wait_for_consumed(5).await;
    let rejected_id: Uuid = rejected["eventId"].as_str().unwrap().parse().unwrap();
    let stored_again: i64 = db
        .query_one("SELECT count(*) FROM events WHERE id = $1", &[&rejected_id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored_again, 1,
        "de-duplication forgot the identity PostgreSQL refused"
    );
    let counted: i64 = db
        .query_one(
            "SELECT event_count FROM stream_state WHERE stream_key = 's-2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        counted, 1,
        "the stream counts the stored event once, not the refused copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_its_topic_goes_without_its_original_bytes() {
    let env = TestEnv::new("dlqlarge").await;
    let topic = env.raw_topic();
    let sentinel = env.start("process", "process-1").await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .create()
        .unwrap();
    // Just under librdkafka's default record limit (message.max.bytes, 1,000,000) on the raw
    // topic; with the dead-letter headers and key added, over it on the dead-letter topic.
    let poison = vec![b'x'; 999_900];
    produce(&producer, &topic, 0, &poison).await;
    let after = serde_json::to_vec(&envelope(
        Uuid::new_v4(),
        "acme",
        "s-1",
        1,
        "2025-06-15T10:00:00Z",
    ))
    .unwrap();
    produce(&producer, &topic, 0, &after).await;
    // Before the fix the batch was retried forever and nothing after it committed.
    env.wait_for_consumed(2).await;
    assert_eq!(
        sentinel
            .metric(r#"dlq_events_total{reason="undecodable"}"#)
            .await,
        1.0
    );
    let dead = dead_letters(&env).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1, poison, "the row keeps the original bytes whole");
    let on_topic = read_topic(&format!("{}events.dlq.v1", env.topic_prefix), 1).await;
    let (headers, value) = &on_topic[0];
    assert!(value.is_empty(), "{} bytes on the topic", value.len());
    assert_eq!(headers["sentinel-dlq-reason"], "undecodable");
    assert_eq!(headers["sentinel-dlq-original-omitted-bytes"], "999900");
    let stored: i64 = env
        .db()
        .await
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "the event after the dead letter is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_one_worker_is_blocked_on_its_commit_the_other_stops_reading() {
    let env = TestEnv::new("paused").await;
    let topic = env.raw_topic();
    let sentinel = env
        .start_with(
            "process",
            "process-1",
            &[
                ("SENTINEL_MAX_UNCOMMITTED_RECORDS", "50"),
                ("SENTINEL_SOURCE_BATCH", "10"),
            ],
        )
        .await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .create()
        .unwrap();
    let event = |stream: &str| {
        serde_json::to_vec(&envelope(
            Uuid::new_v4(),
            "acme",
            stream,
            1,
            "2025-06-15T10:00:00Z",
        ))
        .unwrap()
    };
    produce(&producer, &topic, 0, &event("s-0")).await;
    env.wait_for_consumed(1).await;

    // Worker 0 (partition 0) cannot commit: its offsets row is locked. Records keep coming on
    // partition 0, so its writer queue fills and the worker blocks, holding every time open.
    let mut locker = env.db().await;
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM source_offsets WHERE topic = $1 AND partition = 0 FOR UPDATE",
        &[&topic],
    )
    .await
    .unwrap();
    for _ in 0..8 {
        produce(&producer, &topic, 0, &event("s-0")).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Worker 1 (partition 1) stops at 50 records read and not handed to its writer.
    for _ in 0..300 {
        produce(&producer, &topic, 1, &event("s-1")).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sentinel.log().contains("reading paused") {
        assert!(
            std::time::Instant::now() < deadline,
            "the source never paused:\n{}",
            sentinel.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Unlocked, everything commits, once.
    lock.rollback().await.unwrap();
    env.wait_for_consumed(1 + 8 + 300).await;
    let stored: i64 = env
        .db()
        .await
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1 + 8 + 300);
}

/// A gateway sends a publication of its outcomes again, unchanged, when the broker's
/// acknowledgement was lost, though the broker may have written it: the SLO windows count each
/// publication once (and a record of an older gateway, without an id, as it comes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_publication_on_the_topic_twice_is_counted_once() {
    let env = TestEnv::new("publications").await;
    let _sentinel = env.start("process", "process").await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .create()
        .unwrap();
    let topic = format!("{}gateway.outcomes.v1", env.topic_prefix);
    let publication = |id: Option<Uuid>, good: i64, total: i64| {
        let mut record = serde_json::json!({
            "windowStartUtc": "2026-12-05T10:00:00Z",
            "good": good,
            "total": total,
            "gateway": "gateway-a",
        });
        if let Some(id) = id {
            record["publicationId"] = serde_json::json!(id);
        }
        serde_json::to_vec(&record).unwrap()
    };
    let first = publication(Some(Uuid::new_v4()), 3, 4);
    for record in [
        first.clone(),
        first,
        publication(Some(Uuid::new_v4()), 1, 1),
        publication(None, 2, 2),
    ] {
        produce(&producer, &topic, 0, &record).await;
    }
    let (good, total, _, _) = env.slo_totals(7).await;
    assert_eq!((good, total), (3 + 1 + 2, 4 + 1 + 2));
}

/// A record from any producer whose key alone is too large for the dead-letter topic does not
/// stop the commits: its dead letter goes keyed by its source, without the original bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_whose_key_is_too_large_for_its_topic_does_not_stop_the_commits() {
    let env = TestEnv::new("dlqkey").await;
    let topic = env.raw_topic();
    let _sentinel = env.start("process", "process-1").await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .create()
        .unwrap();
    // Under the record limit (message.max.bytes, 1,000,000) on the raw topic; with the
    // dead-letter headers added, over it on the dead-letter topic even without the value.
    let key = "k".repeat(999_800);
    producer
        .send(
            FutureRecord::to(&topic)
                .partition(0)
                .key(key.as_str())
                .payload(b"not json".as_slice()),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
    let after = serde_json::to_vec(&envelope(
        Uuid::new_v4(),
        "acme",
        "s-1",
        1,
        "2025-06-15T10:00:00Z",
    ))
    .unwrap();
    produce(&producer, &topic, 0, &after).await;
    env.wait_for_consumed(2).await;
    let dead = dead_letters(&env).await;
    assert_eq!(dead.len(), 1);
    let on_topic = read_topic(&format!("{}events.dlq.v1", env.topic_prefix), 1).await;
    let (headers, value) = &on_topic[0];
    assert!(value.is_empty(), "{} bytes on the topic", value.len());
    assert_eq!(headers["sentinel-dlq-original-omitted-bytes"], "8");
    assert_eq!(env.event_count(&env.db().await).await, 1);
}
