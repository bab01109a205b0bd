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
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawning sentinel");
        let process = SentinelProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            log_path,
        };
        process.wait_ready(Duration::from_secs(90)).await;
        process
    }

    /// Number of rows in `events`.
    pub async fn event_count(&self, db: &tokio_postgres::Client) -> i64 {
        db.query_one("SELECT count(*) FROM events", &[])
            .await
            .expect("counting events")
            .get(0)
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

fn free_port() -> u16 {
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
    async fn wait_ready(&self, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
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

    /// The child's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
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
