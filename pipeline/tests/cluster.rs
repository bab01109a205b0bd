//! Two `sentinel` processes form one timely cluster on localhost and process one topic
//! together: the partitions spread over all workers of both processes, and every event arrives
//! exactly once.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use support::{envelope, free_port, ingest_token, post_event, TestEnv};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_form_one_cluster_and_share_the_partitions() {
    let env = TestEnv::new("cluster").await;
    let hosts = format!("127.0.0.1:{},127.0.0.1:{}", free_port(), free_port());
    let cluster = |index: &'static str| {
        [
            ("SENTINEL_TIMELY_HOSTS", hosts.clone()),
            ("SENTINEL_PROCESS_INDEX", index.to_owned()),
            ("SENTINEL_WORKERS", "1".to_owned()),
            // More partitions than the cluster's two workers: each owns two.
            ("SENTINEL_TOPIC_PARTITIONS", "4".to_owned()),
        ]
    };
    let first_env = cluster("0");
    let second_env = cluster("1");
    let as_refs = |vars: &[(&'static str, String); 4]| -> Vec<(&str, String)> {
        vars.iter().map(|(k, v)| (*k, v.clone())).collect()
    };
    let first_vars = as_refs(&first_env);
    let second_vars = as_refs(&second_env);
    let first_refs: Vec<(&str, &str)> = first_vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let second_refs: Vec<(&str, &str)> =
        second_vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Both must run before either is ready: the cluster forms only when every process is there.
    let mut first = env.spawn_with("up", "process-0", &first_refs);
    let mut second = env.spawn_with("up", "process-1", &second_refs);
    first.wait_ready(Duration::from_secs(90)).await;
    second.wait_ready(Duration::from_secs(90)).await;

    let client = reqwest::Client::new();
    let gateways = [first.base_url.clone(), second.base_url.clone()];
    let acked: BTreeSet<Uuid> = stream::iter(0..400usize)
        .map(|seq| {
            let (client, base) = (client.clone(), gateways[seq % 2].clone());
            async move {
                let id = Uuid::new_v4();
                let tenant = ["acme", "globex"][seq % 2];
                let body = envelope(
                    id,
                    tenant,
                    &format!("s-{}", seq % 13),
                    seq,
                    "2025-06-15T10:00:00Z",
                );
                let response = post_event(
                    &client,
                    &base,
                    &ingest_token(tenant),
                    &id.to_string(),
                    &body,
                )
                .await;
                assert_eq!(response.status(), 202);
                id
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    assert_eq!(env.wait_for_events(400, Duration::from_secs(60)).await, 400);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let db = env.db().await;
    let stored: BTreeSet<Uuid> = db
        .query("SELECT id FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(stored, acked, "every event exactly once");
    let partitions: i64 = db
        .query_one(
            "SELECT count(*) FROM source_offsets WHERE topic = $1",
            &[&env.raw_topic()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(partitions, 4, "all partitions were consumed");
    // Worker 0 (process 0) owns partitions 0 and 2, worker 1 (process 1) owns 1 and 3.
    assert!(
        first.log().contains("partitions=[0, 2]"),
        "process 0 log:\n{}",
        first.log()
    );
    assert!(
        second.log().contains("partitions=[1, 3]"),
        "process 1 log:\n{}",
        second.log()
    );
    let (mismatches, _) = env.stream_state_check(&db).await;
    assert_eq!(mismatches, 0);
}
