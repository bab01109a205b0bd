//! A real Prometheus scrapes a running Sentinel under load, with Sentinel's recording and alert
//! rules loaded; every PromQL query of every dashboard in `infra/grafana/dashboards` is then
//! evaluated against it and must return data.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use support::{envelope, free_port, ingest_token, post_event, TestEnv};
use uuid::Uuid;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `expr` of every panel target, with the dashboard variables set to "everything".
fn dashboard_queries() -> Vec<(String, String)> {
    let dir = repo().join("infra/grafana/dashboards");
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the dashboards directory") {
        let path = entry.unwrap().path();
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard JSON");
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let expr = expr
                    .replace("$service", ".*")
                    .replace("$reason", ".*")
                    .replace("$event_type", ".*");
                queries.push((format!("{} / {}", dashboard["title"], panel["title"]), expr));
            }
        }
    }
    assert!(queries.len() > 20, "only {} queries found", queries.len());
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_sentinel_and_every_dashboard_query_returns_data() {
    let env = TestEnv::new("prometheus").await;
    let sentinel = env.start("up", "up").await;
    let target = sentinel.base_url.trim_start_matches("http://").to_owned();

    // Prometheus with the project's rules, scraping every second.
    let dir = env.log_dir.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        repo().join("infra/prometheus/rules.yml"),
        dir.join("rules.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: sentinel\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("starting prometheus (infra/dev test installs it)");

    // Load: valid events through the gateway, refusals, and poison records for the DLQ panels.
    let client = reqwest::Client::new();
    let base = sentinel.base_url.clone();
    let started = Instant::now();
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", support::kafka_brokers())
        .create()
        .unwrap();
    while started.elapsed() < Duration::from_secs(12) {
        stream::iter(0..50usize)
            .for_each_concurrent(10, |seq| {
                let (client, base) = (client.clone(), base.clone());
                async move {
                    let id = Uuid::new_v4();
                    let body = envelope(
                        id,
                        "acme",
                        &format!("s-{}", seq % 5),
                        seq,
                        "2025-06-15T10:00:00Z",
                    );
                    post_event(
                        &client,
                        &base,
                        &ingest_token("acme"),
                        &id.to_string(),
                        &body,
                    )
                    .await;
                }
            })
            .await;
        let _ = post_event(
            &client,
            &base,
            &ingest_token("acme"),
            "",
            &serde_json::json!({}),
        )
        .await;
        let _ = producer
            .send(
                rdkafka::producer::FutureRecord::<(), [u8]>::to(&env.raw_topic())
                    .payload(&b"poison"[..]),
                Duration::from_secs(5),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let api = format!("http://127.0.0.1:{port}/api/v1/query");
    let mut empty = Vec::new();
    for (panel, expr) in dashboard_queries() {
        let answer: serde_json::Value = client
            .get(&api)
            .query(&[("query", expr.as_str())])
            .send()
            .await
            .expect("querying prometheus")
            .json()
            .await
            .expect("prometheus JSON");
        assert_eq!(answer["status"], "success", "{panel}: {expr} → {answer}");
        if answer["data"]["result"]
            .as_array()
            .is_none_or(|r| r.is_empty())
        {
            empty.push(format!("{panel}: {expr}"));
        }
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
}
