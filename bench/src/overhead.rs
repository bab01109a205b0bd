//! Fresh Sentinels for the report's runs (each with a database and topics of its own, and a
//! broker of its own when given a command to start one), and what they cost: the same fixed-rate
//! load against four of them — as shipped (metrics on, tracing off), metrics off, every span
//! exported over OTLP/HTTP to a local receiver, and as shipped once more, whose difference from
//! the first is the run-to-run variation — comparing latency, freshness and CPU time per event,
//! by part of the machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::load::{self, LoadArgs, Mode, Report};

/// One configuration of Sentinel measured.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// What was on.
    pub name: &'static str,
    /// The load's report.
    pub report: Report,
    /// CPU time Sentinel's threads used during the run, per event sent, in microseconds.
    pub cpu_us_per_event: f64,
    /// OTLP bytes the receiver got (tracing variant).
    pub otlp_bytes: u64,
    /// CPU time per event sent, in microseconds, of each part of the machine during the run.
    pub cpu_by_process: Vec<(String, f64)>,
    /// PostgreSQL's part by connection (`application_name`), costliest first, µs per event.
    pub postgres_by_connection: Vec<(String, f64)>,
    /// How much Sentinel's resident memory grew over the run, per event sent, bytes.
    pub resident_growth_per_event: f64,
}

/// The parts of the machine whose CPU time is told apart.
const PARTS: [&str; 5] = [
    "Sentinel",
    "PostgreSQL (every backend)",
    "tansu (broker)",
    "load generator",
    "everything else (kernel threads, other services)",
];

/// Where Sentinel, PostgreSQL and the broker are in [`PARTS`] (and in every `cpu_by_process`).
pub const SENTINEL_PART: usize = 0;
pub const POSTGRES_PART: usize = 1;
pub const BROKER_PART: usize = 2;

/// CPU ticks used so far by each of [`PARTS`] (`/proc/*/stat`), and by the whole machine
/// (`/proc/stat`), which the last part is the rest of.
fn ticks_by_part(sentinel: u32) -> [u64; 5] {
    let mut parts = [0u64; 5];
    let me = std::process::id();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((comm, ticks)) = stat_ticks(&stat) else {
                continue;
            };
            let part = if pid == sentinel {
                0
            } else if comm.starts_with("postgres") {
                1
            } else if comm.starts_with("tansu") {
                2
            } else if pid == me {
                3
            } else {
                continue;
            };
            parts[part] += ticks;
        }
    }
    let machine: u64 = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let cpu = stat.lines().next()?.to_owned();
            // user nice system idle iowait irq softirq steal: all but idle and iowait.
            let values: Vec<u64> = cpu
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            Some(values.iter().take(8).sum::<u64>() - values.get(3)? - values.get(4)?)
        })
        .unwrap_or(0);
    parts[4] = machine.saturating_sub(parts[..4].iter().sum());
    parts
}

/// The command name and the CPU ticks (user + system) of a `/proc/<pid>/stat` line.
fn stat_ticks(stat: &str) -> Option<(&str, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let field = |index: usize| fields.get(index).and_then(|v| v.parse::<u64>().ok());
    Some((
        &stat[open + 1..close],
        field(11).unwrap_or(0) + field(12).unwrap_or(0),
    ))
}

/// CPU ticks of process `pid` so far, if it still runs.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_ticks(&stat).map(|(_, ticks)| ticks)
}

/// The PostgreSQL backends serving the database of `database_url` (but this query's own), with
/// each connection's `application_name`.
async fn backends(database_url: &str) -> anyhow::Result<Vec<(u32, String)>> {
    let rows = crate::on_one_connection(database_url, async |db| {
        db.query(
            "SELECT pid, application_name FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
    })
    .await
    .context("connecting to read pg_stat_activity")?
    .context("reading pg_stat_activity")?;
    Ok(rows
        .iter()
        .map(|row| (row.get::<_, i32>(0) as u32, row.get::<_, String>(1)))
        .collect())
}

/// What the PostgreSQL backends of one database spent from a starting point, grouped by the
/// connections' `application_name` (Sentinel names each connection by its role).
pub struct BackendMeter {
    database_url: String,
    /// CPU ticks of each backend at the start.
    before: HashMap<u32, u64>,
}

/// How the report names connections that set no `application_name` (the generator's own).
const UNNAMED_CONNECTIONS: &str = "connections without a name (the load generator's checks)";

impl BackendMeter {
    /// Starts counting the backends of the database of `database_url`.
    pub async fn start(database_url: &str) -> anyhow::Result<Self> {
        let before = backends(database_url)
            .await?
            .into_iter()
            .filter_map(|(pid, _)| Some((pid, process_ticks(pid)?)))
            .collect();
        Ok(Self {
            database_url: database_url.to_owned(),
            before,
        })
    }

    /// CPU µs per event of each `application_name` since the start, over `events` events,
    /// costliest first. A backend that ended before this call is missed; one that started
    /// after the start counts whole.
    pub async fn per_event(&self, events: u64) -> anyhow::Result<Vec<(String, f64)>> {
        let tick_us = 1e6 / clock_ticks_per_second();
        let mut by_name: HashMap<String, f64> = HashMap::new();
        for (pid, name) in backends(&self.database_url).await? {
            let Some(after) = process_ticks(pid) else {
                continue;
            };
            let before = self.before.get(&pid).copied().unwrap_or(0);
            let name = if name.is_empty() {
                UNNAMED_CONNECTIONS.to_owned()
            } else {
                name
            };
            *by_name.entry(name).or_default() +=
                after.saturating_sub(before) as f64 * tick_us / events.max(1) as f64;
        }
        let mut parts: Vec<(String, f64)> = by_name.into_iter().collect();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(parts)
    }
}

/// Sum of the CPU time of every thread of `pid` so far (`/proc/<pid>/task/*/schedstat`), ns.
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// An OTLP/HTTP receiver that only counts what it is sent.
async fn otlp_receiver() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let bytes = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&bytes);
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(body.len() as u64, Ordering::Relaxed);
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}"), bytes))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, rest)) => {
            let query = rest.split_once('?').map(|(_, q)| format!("?{q}"));
            format!("{base}/{database}{}", query.unwrap_or_default())
        }
        None => url.to_owned(),
    }
}

struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(url: &str, child: &mut Child) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("sentinel exited with {status} before it was ready");
        }
        if let Ok(response) = client.get(format!("{url}/ready")).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("sentinel at {url} not ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts Sentinels of one binary, each on a database and topic prefix of its own, so that
/// every measurement starts from the same state (empty tables, new topics), and each with a
/// fresh broker of its own when [`Sentinels::with_broker_command`] gave one.
pub struct Sentinels {
    sentinel: PathBuf,
    brokers: String,
    broker_command: Option<String>,
    admin: tokio_postgres::Client,
    jwt_secret: String,
    base_database_url: String,
    log_dir: PathBuf,
    stamp: u64,
    started: std::sync::atomic::AtomicUsize,
}

/// Events per second and seconds of the load that warms each fresh Sentinel.
pub const WARM_UP_RATE: u64 = 500;
/// See [`WARM_UP_RATE`].
pub const WARM_UP_SECONDS: u64 = 3;

/// The broker command (run by `sh`) on `port`, with the broker's default log filter: a
/// `RUST_LOG` left in the shell running the bench must not reach it (tansu at `info` writes a
/// line per request and spends about three times the CPU per event).
fn broker_process(command: &str, port: u16) -> Command {
    let mut process = Command::new("sh");
    process
        .arg("-c")
        .arg(format!(
            "exec {}",
            command.replace("{port}", &port.to_string())
        ))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    process
}

/// A running Sentinel started by [`Sentinels::start`].
pub struct FreshSentinel {
    running: Running,
    /// Its own broker, stopped after it (fields drop in order).
    _broker: Option<Running>,
    database: String,
    url: String,
    database_url: String,
}

impl FreshSentinel {
    /// Points `load` at this Sentinel and its database.
    pub fn aim(&self, load: &mut LoadArgs) {
        load.url = self.url.clone();
        load.database_url = self.database_url.clone();
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.running.child.id()
    }
}

/// CPU time of each of the machine's parts from a starting point, per event sent.
pub struct CpuMeter {
    sentinel: u32,
    before: [u64; 5],
}

impl CpuMeter {
    /// Starts counting, with `sentinel` as Sentinel's process.
    pub fn start(sentinel: u32) -> Self {
        Self {
            sentinel,
            before: ticks_by_part(sentinel),
        }
    }

    /// CPU µs per event of each of [`PARTS`] since the start, over `events` events.
    pub fn per_event(&self, events: u64) -> Vec<(String, f64)> {
        let after = ticks_by_part(self.sentinel);
        let tick_us = 1e6 / clock_ticks_per_second();
        PARTS
            .iter()
            .zip(after.iter().zip(self.before))
            .map(|(part, (after, before))| {
                (
                    part.to_string(),
                    after.saturating_sub(before) as f64 * tick_us / events.max(1) as f64,
                )
            })
            .collect()
    }
}

impl Sentinels {
    /// Connects to PostgreSQL (the database of `base`) to create and drop the databases.
    pub async fn connect(sentinel: &Path, base: &LoadArgs, log_dir: &Path) -> anyhow::Result<Self> {
        let brokers =
            std::env::var("KAFKA_BROKERS").context("KAFKA_BROKERS for fresh Sentinels")?;
        let (admin, connection) =
            tokio_postgres::connect(&base.database_url, tokio_postgres::NoTls)
                .await
                .context("connecting to PostgreSQL for fresh Sentinels")?;
        tokio::spawn(connection);
        Ok(Self {
            sentinel: sentinel.to_owned(),
            brokers,
            broker_command: None,
            admin,
            jwt_secret: base.jwt_secret.clone(),
            base_database_url: base.database_url.clone(),
            log_dir: log_dir.to_owned(),
            stamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs(),
            started: Default::default(),
        })
    }

    /// Starts a broker of its own for every Sentinel: `command` (run by `sh`) with `{port}`
    /// replaced by a free port, listening on 127.0.0.1 at that port. A broker whose cost grows
    /// with what it stores (tansu's in-memory engine) then costs every measurement the same.
    pub fn with_broker_command(mut self, command: Option<String>) -> Self {
        self.broker_command = command;
        self
    }

    /// Starts the broker command on a free port; returns it and its address once it accepts
    /// connections.
    async fn start_broker(&self, command: &str, index: usize) -> anyhow::Result<(Running, String)> {
        let port = free_port()?;
        let log = self
            .log_dir
            .join(format!("broker-bench-{}-{index}.log", self.stamp));
        let log_file = std::fs::File::create(&log)?;
        let child = broker_process(command, port)
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting the broker command")?;
        let mut broker = Running { child };
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&address).await.is_err() {
            if let Some(status) = broker.child.try_wait()? {
                bail!(
                    "the broker command exited with {status} (see {})",
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!("the broker at {address} did not accept connections within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((broker, address))
    }

    /// Migrates the database the report was given (`sentinel migrate`).
    pub fn migrate_base(&self) -> anyhow::Result<()> {
        let status = Command::new(&self.sentinel)
            .arg("migrate")
            .env("DATABASE_URL", &self.base_database_url)
            .env("KAFKA_BROKERS", &self.brokers)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("starting {} migrate", self.sentinel.display()))?;
        if !status.success() {
            bail!("sentinel migrate exited with {status}");
        }
        Ok(())
    }

    /// Starts a Sentinel with `env` on a new database and topic prefix; waits until it is ready.
    pub async fn start(&self, env: &[(&str, String)]) -> anyhow::Result<FreshSentinel> {
        let index = self.started.fetch_add(1, Ordering::Relaxed);
        let database = format!("sentinel_bench_fresh_{}_{index}", self.stamp);
        self.admin
            .batch_execute(&format!("CREATE DATABASE \"{database}\""))
            .await
            .with_context(|| format!("creating {database}"))?;
        let database_url = with_database(&self.base_database_url, &database);
        let (broker, brokers) = match &self.broker_command {
            Some(command) => {
                let (broker, address) = self.start_broker(command, index).await?;
                (Some(broker), address)
            }
            None => (None, self.brokers.clone()),
        };
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let log: PathBuf = self
            .log_dir
            .join(format!("sentinel-bench-{}-{index}.log", self.stamp));
        let log_file = std::fs::File::create(&log)?;
        let mut child = Command::new(&self.sentinel)
            .arg("up")
            .env("SENTINEL_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &database_url)
            .env("KAFKA_BROKERS", &brokers)
            .env(
                "SENTINEL_TOPIC_PREFIX",
                format!("bench-{}-{index}.", self.stamp),
            )
            .env("SENTINEL_JWT_SECRET", &self.jwt_secret)
            // As shipped: the default log filter (info), whatever the shell running the bench set.
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", self.sentinel.display()))?;
        wait_ready(&url, &mut child).await?;
        Ok(FreshSentinel {
            running: Running { child },
            _broker: broker,
            database,
            url,
            database_url,
        })
    }

    /// Runs `work` against a fresh Sentinel as shipped: `load` aimed at it and warmed up, with
    /// its process id; stops it afterwards, whatever `work` returned.
    pub async fn on_fresh<T>(
        &self,
        load: &LoadArgs,
        work: impl AsyncFnOnce(&LoadArgs, u32) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.on_fresh_with(&[], load, work).await
    }

    /// [`Sentinels::on_fresh`] with `env` added to the Sentinel's environment.
    pub async fn on_fresh_with<T>(
        &self,
        env: &[(&str, String)],
        load: &LoadArgs,
        work: impl AsyncFnOnce(&LoadArgs, u32) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut load = load.clone();
        let sentinel = self.start(env).await?;
        sentinel.aim(&mut load);
        let result = match Self::warm_up(&load).await {
            Ok(()) => work(&load, sentinel.pid()).await,
            Err(err) => Err(err),
        };
        self.stop(sentinel).await;
        result
    }

    /// Warms a just-started Sentinel aimed at by `load`: a few seconds of light load in the same
    /// mode, drained, so that a measurement starts from steady state (the first records after
    /// start wait for the consumer's first fetches and the writer's first transactions).
    pub async fn warm_up(load: &LoadArgs) -> anyhow::Result<()> {
        let mut warm = load.clone();
        warm.rate = WARM_UP_RATE;
        warm.duration = WARM_UP_SECONDS;
        load::run(&warm, true).await.map(|_| ())
    }

    /// Stops `sentinel` and drops its database.
    pub async fn stop(&self, sentinel: FreshSentinel) {
        let FreshSentinel {
            running, database, ..
        } = sentinel;
        drop(running);
        let _ = self
            .admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
            ))
            .await;
    }

    /// Runs `load` against a fresh Sentinel with `env` and tells what it cost.
    async fn measure(&self, env: &[(&str, String)], load: LoadArgs) -> anyhow::Result<Measured> {
        self.on_fresh_with(env, &load, async |load, pid| {
            let before = cpu_ns(pid)?;
            let resident_before = resident_bytes(pid)?;
            let (report, cpu_by_process, postgres_by_connection) =
                metered_run_by_connection(load, pid).await?;
            let used = cpu_ns(pid)?.saturating_sub(before);
            let grown = resident_bytes(pid)?.saturating_sub(resident_before);
            let events = report.events_sent.max(1) as f64;
            Ok(Measured {
                report,
                sentinel_cpu_us: used as f64 / 1_000.0 / events,
                resident_growth_per_event: grown as f64 / events,
                cpu_by_process,
                postgres_by_connection,
            })
        })
        .await
    }
}

/// Runs `load` against the Sentinel of process `sentinel`, with what each part of the machine
/// spent per event sent during the run ([`CpuMeter`]).
pub async fn metered_run(
    load: &LoadArgs,
    sentinel: u32,
) -> anyhow::Result<(Report, Vec<(String, f64)>)> {
    let meter = CpuMeter::start(sentinel);
    let report = load::run(load, true).await?;
    let cpu_by_process = meter.per_event(report.events_sent);
    Ok((report, cpu_by_process))
}

/// [`metered_run`], with PostgreSQL's part also told apart by connection ([`BackendMeter`]).
pub async fn metered_run_by_connection(
    load: &LoadArgs,
    sentinel: u32,
) -> anyhow::Result<(Report, Vec<(String, f64)>, Vec<(String, f64)>)> {
    let backends = BackendMeter::start(&load.database_url).await?;
    let (report, cpu_by_process) = metered_run(load, sentinel).await?;
    let by_connection = backends.per_event(report.events_sent).await?;
    Ok((report, cpu_by_process, by_connection))
}

/// What one load against a fresh Sentinel measured.
struct Measured {
    report: Report,
    /// Sentinel's own CPU (every thread, schedstat), per event sent, µs.
    sentinel_cpu_us: f64,
    /// How much Sentinel's resident memory grew over the run, per event sent, bytes.
    resident_growth_per_event: f64,
    /// Per part of the machine (`/proc/*/stat`), per event sent, µs.
    cpu_by_process: Vec<(String, f64)>,
    /// PostgreSQL's backends by connection name, per event sent, µs.
    postgres_by_connection: Vec<(String, f64)>,
}

/// Where the CPU goes in one mode at one rate, as shipped.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// The load's report.
    pub report: Report,
    /// CPU time per event sent, in microseconds, of each part of the machine during the run.
    pub cpu_by_process: Vec<(String, f64)>,
    /// PostgreSQL's part by connection (`application_name`), costliest first, µs per event.
    pub postgres_by_connection: Vec<(String, f64)>,
    /// How much Sentinel's resident memory grew over the run, per event sent, bytes.
    pub resident_growth_per_event: f64,
}

/// The last observability variant: the first (as shipped) run again, so that the report can
/// tell a difference between variants from the machine's run-to-run variation.
pub const AS_SHIPPED_AGAIN: &str = "as shipped, once more (run-to-run variation)";

/// Runs the observability variants (single events at `rate` for `seconds`, one fresh Sentinel
/// each), then, as shipped, `profile_mode` at `profile_rate` to tell where the CPU goes there.
pub async fn measure(
    sentinels: &Sentinels,
    base: &LoadArgs,
    rate: u64,
    seconds: u64,
    (profile_mode, profile_rate): (Mode, Option<u64>),
) -> anyhow::Result<(Vec<Variant>, Option<Profile>)> {
    let (otlp, received) = otlp_receiver().await?;
    let variants: [(&'static str, Vec<(&str, String)>); 4] = [
        ("as shipped: metrics on, tracing off", vec![]),
        (
            "metrics off, tracing off",
            vec![("SENTINEL_METRICS", "off".into())],
        ),
        (
            "metrics on, every span exported (OTLP/HTTP)",
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
                ("OTEL_TRACES_SAMPLER", "always_on".into()),
                ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "65536".into()),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2048".into()),
            ],
        ),
        (AS_SHIPPED_AGAIN, vec![]),
    ];
    let mut measured = Vec::new();
    for (name, env) in variants {
        let mut load = base.clone();
        load.mode = Mode::Single;
        load.rate = rate;
        load.duration = seconds;
        eprintln!("report: overhead, {name}, {rate} events/s");
        let before_bytes = received.load(Ordering::Relaxed);
        let run = sentinels.measure(&env, load).await?;
        measured.push(Variant {
            name,
            cpu_by_process: run.cpu_by_process,
            postgres_by_connection: run.postgres_by_connection,
            cpu_us_per_event: run.sentinel_cpu_us,
            resident_growth_per_event: run.resident_growth_per_event,
            otlp_bytes: received.load(Ordering::Relaxed) - before_bytes,
            report: run.report,
        });
    }
    let profile = match profile_rate {
        Some(rate) => {
            let mut load = base.clone();
            load.mode = profile_mode;
            load.rate = rate;
            load.duration = seconds;
            eprintln!("report: where the CPU goes, {profile_mode:?} at {rate} events/s");
            let run = sentinels.measure(&[], load).await?;
            Some(Profile {
                report: run.report,
                cpu_by_process: run.cpu_by_process,
                postgres_by_connection: run.postgres_by_connection,
                resident_growth_per_event: run.resident_growth_per_event,
            })
        }
        None => None,
    };
    Ok((measured, profile))
}

/// The resident memory of process `pid` (`VmRSS` of `/proc/<pid>/status`), bytes.
pub(crate) fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    vm_rss_bytes(&status).ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// The `VmRSS` line of a `/proc/<pid>/status` text, in bytes.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`; 100 on Linux here).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_the_command_and_its_ticks() {
        // utime (14th field) 1200 and stime (15th) 34; the command holds a space and a ')'.
        let stat = "4242 (postgres: x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 1200 34 0 0 20 0 1 0";
        assert_eq!(stat_ticks(stat), Some(("postgres: x)", 1234)));
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn the_broker_runs_on_its_port_without_the_shells_log_filter() {
        let process = broker_process("tansu broker --listener-url tcp://127.0.0.1:{port}", 19123);
        let args: Vec<_> = process.get_args().collect();
        assert_eq!(args[0], "-c");
        assert_eq!(
            args[1],
            "exec tansu broker --listener-url tcp://127.0.0.1:19123"
        );
        let log_filter = process
            .get_envs()
            .find(|(name, _)| *name == "RUST_LOG")
            .map(|(_, value)| value);
        assert_eq!(log_filter, Some(None), "RUST_LOG is removed, not inherited");
    }

    #[test]
    fn the_resident_size_is_read_in_bytes() {
        let status = "Name:\tsentinel\nVmPeak:\t  900 kB\nVmRSS:\t  368032 kB\nThreads:\t12\n";
        assert_eq!(vm_rss_bytes(status), Some(368_032 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tkthreadd\n"), None);
    }
}
