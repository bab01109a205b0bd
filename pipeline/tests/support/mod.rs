//! Shared harness of the end-to-end tests: an isolated database and topic prefix per test, the
//! real `sentinel` binary as a child process, and helpers to send events and read results.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;
use uuid::Uuid;

/// The PostgreSQL server and broker the tests use: the ones `infra/dev up` provides.
pub fn base_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/sentinel".to_owned())
}

/// Secret the tests' Sentinel processes verify HS256 tokens with.
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret!";

/// A token for `tenant` with `roles`, valid for an hour.
pub fn token(tenant: &str, roles: &[ingress::Role]) -> String {
    ingress::auth::mint_hs256(
        JWT_SECRET,
        tenant,
        roles,
        Duration::from_secs(3600),
        None,
        None,
    )
    .expect("minting a token")
}

/// An ingest token for `tenant`.
pub fn ingest_token(tenant: &str) -> String {
    token(tenant, &[ingress::Role::Ingest])
}

/// POSTs one event with a bearer token and an idempotency key.
pub async fn post_event(
    client: &reqwest::Client,
    base_url: &str,
    token: &str,
    idempotency_key: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    client
        .post(format!("{base_url}/v1/events"))
        .bearer_auth(token)
        .header("idempotency-key", idempotency_key)
        .json(body)
        .send()
        .await
        .expect("POST /v1/events")
}

/// POSTs one acme event with a `traceparent`; it must be accepted.
pub async fn post_traced(base_url: &str, traceparent: &str, key: &str, body: &serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{base_url}/v1/events"))
        .bearer_auth(ingest_token("acme"))
        .header("idempotency-key", key)
        .header("traceparent", traceparent)
        .json(body)
        .send()
        .await
        .expect("POST /v1/events");
    assert_eq!(response.status(), 202);
}

/// POSTs a raw body to `/v1/events` with a bearer token, an idempotency key and a content type.
pub async fn post_raw(
    client: &reqwest::Client,
    base_url: &str,
    token: &str,
    idempotency_key: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client
        .post(format!("{base_url}/v1/events"))
        .bearer_auth(token)
        .header("idempotency-key", idempotency_key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST /v1/events")
}

/// The tansu binary `infra/dev` installed (for tests that need a broker of their own).
pub fn tansu_bin() -> PathBuf {
    std::env::var_os("SENTINEL_TANSU_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/sentinel/tansu-0.6.0/bin/tansu")
        })
}

/// A broker of the test's own, which the test may pause and resume.
pub struct PrivateBroker {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub address: String,
}

impl PrivateBroker {
    /// Starts tansu with in-memory storage on a free port and waits until it accepts connections.
    pub async fn start() -> Self {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting tansu from {:?}: {e}; run infra/dev up",
                    tansu_bin()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {address}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, address }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a paused broker (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kafka bootstrap servers for the tests.
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn with_database(url: &str, database: &str) -> String {
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    format!("{base}/{database}")
}

/// One test's isolated world: its own database and its own topic prefix on the shared broker.
pub struct TestEnv {
    /// Name of the test's database.
    pub database: String,
    /// URL of the test's database.
    pub database_url: String,
    admin_url: String,
    /// Topic prefix of the test.
    pub topic_prefix: String,
    /// Where the children's logs go.
    pub log_dir: PathBuf,
}

impl TestEnv {
    /// Creates the database; panics with a pointer to `infra/dev up` when the server is absent.
    pub async fn new(name: &str) -> Self {
        let suffix = Uuid::new_v4().simple().to_string();
        let database = format!("sentinel_test_{name}_{}", &suffix[..12]);
        let base = base_database_url();
        let admin_url = with_database(&base, "postgres");
        let (client, connection) = tokio_postgres::connect(&admin_url, NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {admin_url} is not reachable ({e}); run infra/dev up")
            });
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{database}\""))
            .await
            .expect("creating the test database");
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&database);
        std::fs::create_dir_all(&log_dir).expect("creating the log directory");
        Self {
            database_url: with_database(&base, &database),
            topic_prefix: format!("test-{}.", &suffix[..12]),
            database,
            admin_url,
            log_dir,
        }
    }

    /// A client of the server's maintenance database.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.admin_url, NoTls)
            .await
            .expect("connecting to the maintenance database");
        tokio::spawn(connection);
        client
    }

    /// Makes the test's database refuse connections, and ends the ones it has: an outage for
    /// everything that uses it, while the server itself stays up.
    pub async fn refuse_connections(&self) {
        self.admin()
            .await
            .batch_execute(&format!(
                "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS false; \
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}';",
                db = self.database
            ))
            .await
            .expect("blocking the test database");
    }

    /// Ends [`TestEnv::refuse_connections`].
    pub async fn allow_connections(&self) {
        self.admin()
            .await
            .batch_execute(&format!(
                "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS true",
                self.database
            ))
            .await
            .expect("unblocking the test database");
    }

    /// A client of the test's database.
    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.database_url, NoTls)
            .await
            .expect("connecting to the test database");
        tokio::spawn(connection);
        client
    }

    /// Starts `sentinel <role>` against this environment and waits until `/ready` says so.
    pub async fn start(&self, role: &str, label: &str) -> SentinelProcess {
        self.start_with(role, label, &[]).await
    }

    /// Like [`TestEnv::start`], with extra environment variables (which win).
    pub async fn start_with(
        &self,
        role: &str,
        label: &str,
        extra: &[(&str, &str)],
    ) -> SentinelProcess {
        let mut process = self.spawn_with(role, label, extra);
        process.wait_ready(Duration::from_secs(90)).await;
        process
    }

    /// Starts `sentinel <role>` without waiting for it to be ready.
    pub fn spawn_with(&self, role: &str, label: &str, extra: &[(&str, &str)]) -> SentinelProcess {
        let port = free_port();
        let log_path = self.log_dir.join(format!("{label}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("opening the child log");
        let child = Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .arg(role)
            .env("SENTINEL_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &self.database_url)
            .env("KAFKA_BROKERS", kafka_brokers())
            .env("SENTINEL_TOPIC_PREFIX", &self.topic_prefix)
            .env("SENTINEL_WORKERS", "2")
            .env("SENTINEL_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .env("SENTINEL_JWT_SECRET", JWT_SECRET)
            .env("SENTINEL_OUTCOME_FLUSH_MS", "200")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning sentinel");
        SentinelProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            log_path,
        }
    }

    /// Number of rows in `events`.
    pub async fn event_count(&self, db: &tokio_postgres::Client) -> i64 {
        db.query_one("SELECT count(*) FROM events", &[])
            .await
            .expect("counting events")
            .get(0)
    }

    /// The raw topic of this environment.
    pub fn raw_topic(&self) -> String {
        format!("{}events.raw.v1", self.topic_prefix)
    }

    /// Records consumed from the raw topic, as stored in `source_offsets`.
    pub async fn consumed_records(&self, db: &tokio_postgres::Client) -> i64 {
        db.query_one(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM source_offsets WHERE topic = $1",
            &[&self.raw_topic()],
        )
        .await
        .expect("reading source offsets")
        .get(0)
    }

    /// Streams whose `stream_state` row differs from a recomputation over `events` (latest by
    /// event time then offset, and the count), plus the number of stream_state rows.
    pub async fn stream_state_check(&self, db: &tokio_postgres::Client) -> (i64, i64) {
        let mismatches: i64 = db
            .query_one(
                "SELECT count(*) FROM stream_state s FULL JOIN ( \
                    SELECT DISTINCT ON (tenant_id, stream_key) tenant_id, stream_key, id, timestamp_utc, \
                        count(*) OVER (PARTITION BY tenant_id, stream_key) AS n \
                    FROM events ORDER BY tenant_id, stream_key, timestamp_utc DESC, source_offset DESC \
                 ) e USING (tenant_id, stream_key) \
                 WHERE s.last_event_id IS DISTINCT FROM e.id OR s.event_count IS DISTINCT FROM e.n \
                    OR s.last_seen_utc IS DISTINCT FROM e.timestamp_utc",
                &[],
            )
            .await
            .expect("checking stream_state")
            .get(0);
        let rows: i64 = db
            .query_one("SELECT count(*) FROM stream_state", &[])
            .await
            .expect("counting stream_state")
            .get(0);
        (mismatches, rows)
    }

    /// Sums of `slo_samples` over all windows, once `ingestion_total` reaches `answers` (or 30 s
    /// passed): (ingestion_good, ingestion_total, freshness_good, freshness_total).
    pub async fn slo_totals(&self, answers: i64) -> (i64, i64, i64, i64) {
        let db = self.db().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let row = db
                .query_one(
                    "SELECT coalesce(sum(ingestion_good), 0)::bigint, coalesce(sum(ingestion_total), 0)::bigint, \
                            coalesce(sum(freshness_good), 0)::bigint, coalesce(sum(freshness_total), 0)::bigint \
                     FROM slo_samples",
                    &[],
                )
                .await
                .expect("summing slo_samples");
            let totals = (row.get(0), row.get(1), row.get(2), row.get(3));
            if totals.1 >= answers || Instant::now() > deadline {
                return totals;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits (up to 20 s) until `count` sessions of this database named `application` wait for
    /// a lock: the point a test that holds rows waits for before it lets them go.
    pub async fn wait_for_lock_waiters(&self, application: &str, count: i64) {
        let db = self.admin().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let waiting: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND application_name = $2 AND wait_event_type = 'Lock'",
                    &[&self.database, &application],
                )
                .await
                .expect("reading pg_stat_activity")
                .get(0);
            if waiting >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{count} sessions of {application} never waited for a lock ({waiting} did)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to 60 s) until the dataflow consumed `records` raw records.
    pub async fn wait_for_consumed(&self, records: i64) {
        let db = self.db().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.consumed_records(&db).await < records {
            assert!(
                Instant::now() < deadline,
                "the dataflow did not consume {records} records"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `events` holds at least `expected` rows; returns the count seen last.
    pub async fn wait_for_events(&self, expected: i64, timeout: Duration) -> i64 {
        let db = self.db().await;
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.event_count(&db).await;
            if count >= expected || Instant::now() > deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let database = self.database.clone();
        // Drop the database on a fresh thread: Drop may run inside or outside a runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for cleanup");
            runtime.block_on(async {
                if let Ok((client, connection)) = tokio_postgres::connect(&admin_url, NoTls).await {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!(
                            "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                        ))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("finding a free port")
}

/// A running `sentinel` child process; killed when dropped.
pub struct SentinelProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// The child's log file.
    pub log_path: PathBuf,
}

impl SentinelProcess {
    /// Waits until `/ready` answers 200; panics (with the log) if the process exits first.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sentinel exited with {status} before it was ready; log:\n{}",
                    self.log()
                );
            }
            if let Ok(response) = client.get(format!("{}/ready", self.base_url)).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sentinel at {} not ready within {timeout:?}; log:\n{}",
                self.base_url,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The sum of every sample of the metric `name`, whatever its labels.
    pub async fn metric_total(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base_url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The value of one sample of `/metrics`, e.g. `gateway_requests_total{status="202"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base_url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// The child's log so far.
    pub fn log(&self) -> String {
        let raw = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        // Drop the colour escapes of the text log format.
        let mut plain = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for next in chars.by_ref() {
                    if next.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        plain
    }

    /// SIGTERM, then waits up to `timeout` for the process to exit; its exit status, or `None`
    /// when it was still running at the deadline.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("polling sentinel") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL: no shutdown hooks, no flushing.
    pub fn kill(&mut self) {
        self.child.kill().expect("killing sentinel");
        self.child.wait().expect("reaping sentinel");
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A valid envelope for the tests.
pub fn envelope(
    event_id: Uuid,
    tenant: &str,
    stream: &str,
    seq: usize,
    timestamp: &str,
) -> serde_json::Value {
    serde_json::json!({
        "eventId": event_id,
        "tenantId": tenant,
        "source": format!("service-{}", seq % 4),
        "type": if seq.is_multiple_of(2) { "order.created" } else { "order.paid" },
        "timestampUtc": timestamp,
        "schemaVersion": 1 + (seq % 3),
        "streamKey": stream,
        "payload": {"seq": seq, "amount": seq as f64 / 4.0, "tags": ["a", "b"], "nested": {"ok": true}},
    })
}

/// One Server-Sent Events message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// `id:`.
    pub id: Option<String>,
    /// `event:` (default `message`).
    pub event: String,
    /// `data:` lines joined by newlines.
    pub data: String,
}

impl SseMessage {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("SSE data is JSON")
    }
}

/// A reader of an SSE response, message by message (comments skipped).
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl SseReader {
    /// Opens `GET {base_url}/v1/stream{query}` with `token` and, when given, `Last-Event-ID`.
    pub async fn open(
        client: &reqwest::Client,
        base_url: &str,
        token: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        let mut request = client
            .get(format!("{base_url}/v1/stream{query}"))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("GET /v1/stream");
        assert_eq!(response.status(), 200, "the feed opens");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "the feed is an event stream"
        );
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next message, or `None` when the server closed the stream or `timeout` passed.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseMessage> {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut message = SseMessage {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => message.id = Some(value.to_owned()),
                        "event" => message.event = value.to_owned(),
                        "data" => {
                            if has_data {
                                message.data.push('\n');
                            }
                            message.data.push_str(value);
                            has_data = true;
                        }
                        _ => {}
                    }
                }
                if has_data {
                    return Some(message);
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(Some(Err(_))) | Ok(None) | Err(_) => return None,
            }
        }
    }
}
