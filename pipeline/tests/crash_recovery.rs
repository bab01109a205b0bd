//! SIGKILL of the process running the dataflow, mid-stream: after a restart every event that
//! was answered 202 is in `events` exactly once, and the stored offsets cover exactly the
//! records produced.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use support::{envelope, ingest_token, post_event, TestEnv};
use uuid::Uuid;

const EVENTS: usize = 4_000;
/// Events per second the sender offers, so that the kill lands mid-stream.
const RATE: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_dataflow_mid_stream_loses_and_duplicates_nothing() {
    let env = TestEnv::new("crash").await;
    let gateway = env.start("ingress", "ingress").await;
    let mut dataflow = env.start("process", "process-1").await;

    let acked: Arc<Mutex<BTreeSet<Uuid>>> = Arc::default();
    let sender = {
        let acked = Arc::clone(&acked);
        let base_url = gateway.base_url.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let started = Instant::now();
            stream::iter(0..EVENTS)
                .map(|seq| {
                    let client = client.clone();
                    let base_url = base_url.clone();
                    let acked = Arc::clone(&acked);
                    async move {
                        // Open loop at RATE events/s.
                        let due = started + Duration::from_micros(seq as u64 * 1_000_000 / RATE);
                        tokio::time::sleep_until(due.into()).await;
                        let id = Uuid::new_v4();
                        let tenant = ["acme", "globex", "initech"][seq % 3];
                        let body = envelope(
                            id,
                            tenant,
                            &format!("stream-{}", seq % 20),
                            seq,
                            "2025-06-15T10:00:00Z",
                        );
                        let response = post_event(
                            &client,
                            &base_url,
                            &ingest_token(tenant),
                            &id.to_string(),
                            &body,
                        )
                        .await;
                        if response.status() == 202 {
                            acked.lock().unwrap().insert(id);
                        }
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<()>>()
                .await;
        })
    };

    // Kill the dataflow once it has written part of the stream.
    let db = env.db().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let count = env.event_count(&db).await;
        if count >= 800 {
            break count;
        }
        assert!(
            Instant::now() < deadline,
            "the dataflow never reached 800 events; log:\n{}",
            dataflow.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    dataflow.kill();
    let acked_at_kill = acked.lock().unwrap().len();
    assert!(
        (at_kill as usize) < EVENTS,
        "the kill did not land mid-stream ({at_kill} of {EVENTS} already stored)"
    );

    // The gateway keeps accepting while the dataflow is down; then the dataflow comes back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let dataflow = env.start("process", "process-2").await;
    sender.await.expect("sender task");
    let acked: BTreeSet<Uuid> = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        EVENTS,
        "the gateway (which was not killed) should have accepted every event"
    );
    assert!(
        acked_at_kill < EVENTS,
        "events were still being sent after the kill"
    );

    let arrived = env
        .wait_for_events(acked.len() as i64, Duration::from_secs(90))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = db
        .query("SELECT id FROM events", &[])
        .await
        .expect("reading events");
    let stored: Vec<Uuid> = rows.iter().map(|row| row.get(0)).collect();
    let stored_set: BTreeSet<Uuid> = stored.iter().copied().collect();
    assert_eq!(stored.len(), stored_set.len(), "an event is stored twice");
    let lost: Vec<&Uuid> = acked.difference(&stored_set).take(5).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events are missing (e.g. {lost:?}); {arrived} rows; log:\n{}",
        acked.difference(&stored_set).count(),
        dataflow.log()
    );
    let extra: Vec<&Uuid> = stored_set.difference(&acked).take(5).collect();
    assert!(
        extra.is_empty(),
        "rows that were never acknowledged: {extra:?}"
    );

    assert_eq!(
        env.consumed_records(&db).await,
        EVENTS as i64,
        "stored offsets must cover exactly the records produced"
    );
    let (mismatches, streams) = env.stream_state_check(&db).await;
    assert_eq!(
        (mismatches, streams),
        (0, 60),
        "after the crash stream_state still equals a recomputation over events"
    );
    let (_, _, fresh_good, fresh_total) = env.slo_totals(0).await;
    assert_eq!(
        fresh_total, EVENTS as i64,
        "freshness is counted once per stored event, also across the crash ({fresh_good} good)"
    );
}

/// PostgreSQL refuses connections for 10 s mid-stream: the dataflow waits and retries, never
/// dead-letters, and resumes by itself; every event answered 202 is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_mid_stream_is_waited_out() {
    let env = TestEnv::new("dbdown").await;
    let gateway = env.start("ingress", "ingress").await;
    let dataflow = env.start("process", "process").await;
    let client = reqwest::Client::new();
    let mut acked = BTreeSet::new();
    let send = |seq: usize| {
        let id = Uuid::new_v4();
        let tenant = ["acme", "globex"][seq % 2];
        (
            id,
            tenant,
            envelope(
                id,
                tenant,
                &format!("stream-{}", seq % 7),
                seq,
                "2025-06-15T10:00:00Z",
            ),
        )
    };
    for seq in 0..200 {
        let (id, tenant, body) = send(seq);
        let response = post_event(
            &client,
            &gateway.base_url,
            &ingest_token(tenant),
            &id.to_string(),
            &body,
        )
        .await;
        assert_eq!(response.status(), 202);
        acked.insert(id);
    }
    assert_eq!(env.wait_for_events(200, Duration::from_secs(30)).await, 200);

    // Block the database for the dataflow: no new connections, existing ones terminated.
    env.refuse_connections().await;
    let blocked_at = Instant::now();
    // The gateway's claims need the database too: while it is down the gateway answers 503,
    // and accepts again afterwards. Records already on the topic must wait for the dataflow.
    // Keyed like the gateway (tenantId|streamKey, murmur2), so each stream stays in one partition.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let mut during = BTreeSet::new();
    for seq in 200..400 {
        let (id, tenant, body) = send(seq);
        let value = serde_json::to_vec(&body).unwrap();
        let key = format!("{tenant}|stream-{}", seq % 7);
        producer
            .send(
                rdkafka::producer::FutureRecord::<str, [u8]>::to(&env.raw_topic())
                    .key(&key)
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .expect("produce during the outage");
        during.insert(id);
    }
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(blocked_at.elapsed())).await;
    env.allow_connections().await;

    assert_eq!(
        env.wait_for_events(400, Duration::from_secs(60)).await,
        400,
        "the dataflow did not resume after the outage; log:\n{}",
        dataflow.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let db = env.db().await;
    let stored: BTreeSet<Uuid> = db
        .query("SELECT id FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let expected: BTreeSet<Uuid> = acked.union(&during).copied().collect();
    assert_eq!(stored, expected, "exactly the sent events, once each");
    let dead: i64 = db
        .query_one("SELECT count(*) FROM dead_letter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        dead, 0,
        "a transient outage must never dead-letter anything"
    );
    assert!(
        dataflow
            .metric(r#"processor_events_total{result="retry"}"#)
            .await
            > 0.0,
        "the outage should have been retried"
    );
    let (mismatches, _) = env.stream_state_check(&db).await;
    assert_eq!(mismatches, 0);
}

/// A shutdown that waits for PostgreSQL to come back (to commit what it consumed) ends at once
/// on a second SIGTERM; what it did not commit is read again at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_a_shutdown_that_waits_for_postgres() {
    let env = TestEnv::new("second_signal").await;
    let mut dataflow = env.start("process", "process-1").await;
    env.refuse_connections().await;
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .create()
        .unwrap();
    let event = envelope(Uuid::new_v4(), "acme", "s", 1, "2025-06-15T10:00:00Z");
    producer
        .send(
            rdkafka::producer::FutureRecord::<str, [u8]>::to(&env.raw_topic())
                .key("acme|s")
                .payload(&serde_json::to_vec(&event).unwrap()),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
    // Let the dataflow consume it and fail to commit it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        dataflow.terminate(Duration::from_secs(3)).is_none(),
        "the first SIGTERM waits for the commit"
    );
    let status = dataflow
        .terminate(Duration::from_secs(5))
        .expect("the second SIGTERM ends it at once");
    assert!(!status.success(), "{status:?}");
    // Nothing was lost: a new dataflow stores the event once PostgreSQL is back.
    env.allow_connections().await;
    let _restarted = env.start("process", "process-2").await;
    assert_eq!(env.wait_for_events(1, Duration::from_secs(30)).await, 1);
}
