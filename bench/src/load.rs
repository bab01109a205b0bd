//! The open-loop load generator: requests leave at a constant arrival rate and latency is
//! measured from each request's *intended* send time, so a slow server cannot hide its queueing
//! (no coordinated omission). Freshness is each event's arrival on the live feed, which the run
//! subscribes to for each of its tenants before it sends (its rows' `processed_utc` when there is
//! no feed). At the end it reads PostgreSQL to check that exactly the expected rows arrived.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use uuid::Uuid;

use crate::feed::FeedWatch;
use crate::http::HttpPool;

/// Open-loop load against `POST /v1/events` or `POST /v1/events:batch`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Sentinel's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// PostgreSQL URL, to check rows and measure freshness.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/sentinel"
    )]
    pub database_url: String,
    /// Secret to mint HS256 tokens with (the server's SENTINEL_JWT_SECRET).
    #[arg(long, env = "SENTINEL_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Target events per second (in batch mode, events, not requests).
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Most requests in flight at once (HTTP connections, opened as needed). A pool of C
    /// HTTP/1.1 connections sends at most C / latency requests per second (64 connections at
    /// 9 ms: 7,100/s), so the default leaves room for the clients a gateway serves.
    #[arg(long, default_value_t = 512)]
    pub connections: usize,
    /// One event per request, or NDJSON batches.
    #[arg(long, value_enum, default_value = "single")]
    pub mode: Mode,
    /// Events per batch request.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Percent of requests that repeat an earlier key and payload (expect a replay).
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// Percent of requests that reuse an earlier key with another payload (expect 409).
    #[arg(long, default_value_t = 0.0)]
    pub conflicts: f64,
    /// Percent of invalid events (expect 400).
    #[arg(long, default_value_t = 0.0)]
    pub invalid: f64,
    /// Number of tenants.
    #[arg(long, default_value_t = 3)]
    pub tenants: usize,
    /// Number of streams per tenant.
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// Seconds to wait for the pipeline to store everything after sending stops.
    #[arg(long, default_value_t = 60)]
    pub drain_timeout: u64,
    /// Write the JSON result here (the markdown summary goes to stdout).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Do not read PostgreSQL afterwards (for targets that store nothing, like the HTTP ceiling).
    #[arg(long)]
    pub no_check: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Single,
    Batch,
}

impl Mode {
    /// The mode as the command line and the report spell it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Batch => "batch",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Original,
    Duplicate,
    Conflict,
    Invalid,
}

/// What one event of the load is, and what the server must answer.
struct Planned {
    kind: Kind,
    key: String,
    tenant: usize,
    body: serde_json::Value,
}

/// Originals whose request was answered: the only safe targets for duplicates and conflicts
/// (an event still in flight may lose the race to its own duplicate).
type Answered = Arc<Mutex<Vec<(String, usize, serde_json::Value)>>>;

struct Generator {
    run: String,
    args: LoadArgs,
    rng: rand::rngs::StdRng,
    answered: Answered,
    filler: String,
}

impl Generator {
    fn new(args: LoadArgs, run: String, answered: Answered) -> Self {
        let filler = "x".repeat(args.payload_bytes.saturating_sub(60).max(1));
        Self {
            run,
            args,
            rng: rand::rngs::StdRng::seed_from_u64(7),
            answered,
            filler,
        }
    }

    fn tenant_name(&self, tenant: usize) -> String {
        format!("bench-{}-{tenant}", self.run)
    }

    /// A random tenant (a batch request is for one tenant: its token's).
    fn pick_tenant(&mut self) -> usize {
        self.rng.random_range(0..self.args.tenants)
    }

    fn next(&mut self, seq: u64, tenant: usize) -> Planned {
        let roll = self.rng.random::<f64>() * 100.0;
        let (dup, conflict, invalid) =
            (self.args.duplicates, self.args.conflicts, self.args.invalid);
        if roll < dup + conflict {
            // An answered event of this tenant, among the last thousand.
            let answered = self.answered.lock().expect("answered list");
            let window = answered.len().min(1000);
            let candidates: Vec<usize> = (answered.len() - window..answered.len())
                .filter(|&i| answered[i].1 == tenant)
                .collect();
            if !candidates.is_empty() {
                let pick = candidates[self.rng.random_range(0..candidates.len())];
                let (key, tenant, mut body) = answered[pick].clone();
                if roll < dup {
                    return Planned {
                        kind: Kind::Duplicate,
                        key,
                        tenant,
                        body,
                    };
                }
                body["eventId"] = serde_json::json!(Uuid::new_v4());
                return Planned {
                    kind: Kind::Conflict,
                    key,
                    tenant,
                    body,
                };
            }
        }
        let stream = self.rng.random_range(0..self.args.streams);
        let mut body = serde_json::json!({
            "eventId": Uuid::new_v4(),
            "tenantId": self.tenant_name(tenant),
            "source": "bench",
            "type": "bench.event",
            "timestampUtc": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "schemaVersion": 1,
            "streamKey": format!("stream-{stream}"),
            "payload": {"seq": seq, "filler": self.filler},
        });
        let key = format!("{}-{seq}", self.run);
        if roll < dup + conflict + invalid {
            body["schemaVersion"] = serde_json::json!(0);
            return Planned {
                kind: Kind::Invalid,
                key,
                tenant,
                body,
            };
        }
        Planned {
            kind: Kind::Original,
            key,
            tenant,
            body,
        }
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    unexpected: AtomicU64,
    errors: AtomicU64,
    /// New events the gateway accepted: the rows the pipeline must store.
    accepted: AtomicU64,
    /// Events answered otherwise than expected, by the status they got.
    unexpected_by_status: std::sync::Mutex<BTreeMap<u16, u64>>,
    peak_in_flight: AtomicU64,
}

/// How the gateway answered one request's events.
#[derive(Default)]
struct Answers {
    /// Answered with the status expected of their kind.
    as_expected: u64,
    /// Indices of the new events accepted (202 to an original): each must become one row.
    accepted: Vec<usize>,
    /// Events answered otherwise, by status.
    unexpected: BTreeMap<u16, u64>,
}

impl Answers {
    fn note(&mut self, index: usize, plan: &Planned, status: u16, answer: impl FnOnce() -> String) {
        if status == expected_status(plan.kind) {
            self.as_expected += 1;
            if plan.kind == Kind::Original {
                self.accepted.push(index);
            }
        } else {
            *self.unexpected.entry(status).or_default() += 1;
            report_unexpected(plan, &answer());
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

pub fn percentiles(histogram: &Histogram<u64>, scale: f64) -> Percentiles {
    let at = |q: f64| histogram.value_at_quantile(q) as f64 / scale;
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p95: at(0.95),
        p99: at(0.99),
        p999: at(0.999),
        max: histogram.max() as f64 / scale,
        count: histogram.len(),
    }
}

/// Samples of Sentinel's `/metrics`, by full sample name.
pub async fn scrape(client: &reqwest::Client, url: &str) -> std::collections::HashMap<String, f64> {
    let text = match client.get(format!("{url}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Upper bound of the histogram bucket that holds quantile `q` of what `name` (a Prometheus
/// histogram without labels besides `le`) recorded between two scrapes; `None` when it recorded
/// nothing.
fn bucket_quantile(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
    name: &str,
    q: f64,
) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(key, count)| {
            let bound = key.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count - before.get(key).unwrap_or(&0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map(|(bound, _)| *bound)
}

/// Where the server's own time went during the run: p99 of the broker's acknowledgement and of
/// the idempotency claim, each the upper bound of its histogram bucket (ms).
#[derive(Debug, Clone, Serialize)]
pub struct ServerTails {
    pub broker_ack_p99_ms: Option<f64>,
    pub claim_wait_p99_ms: Option<f64>,
}

fn server_tails(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
) -> ServerTails {
    ServerTails {
        broker_ack_p99_ms: bucket_quantile(before, after, "broker_produce_duration_ms", 0.99),
        claim_wait_p99_ms: bucket_quantile(before, after, "idempotency_claim_duration_ms", 0.99),
    }
}

/// What the idempotency store cost during the run, from the server's own metrics.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimCost {
    pub claims: f64,
    pub claim_statements: f64,
    pub claims_per_statement: f64,
    pub statements_per_event: f64,
    pub mean_wait_ms: f64,
}

fn claim_cost(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
    events: u64,
) -> ClaimCost {
    let delta = |name: &str| after.get(name).unwrap_or(&0.0) - before.get(name).unwrap_or(&0.0);
    let claims = delta(r#"idempotency_operations_total{kind="claim"}"#);
    let statements: f64 = ["claim", "complete", "release"]
        .iter()
        .map(|kind| delta(&format!(r#"idempotency_statements_total{{kind="{kind}"}}"#)))
        .sum();
    let claim_statements = delta(r#"idempotency_statements_total{kind="claim"}"#);
    let waits = delta("idempotency_claim_duration_ms_count");
    ClaimCost {
        claims,
        claim_statements,
        claims_per_statement: if claim_statements > 0.0 {
            claims / claim_statements
        } else {
            0.0
        },
        statements_per_event: statements / events.max(1) as f64,
        mean_wait_ms: if waits > 0.0 {
            delta("idempotency_claim_duration_ms_sum") / waits
        } else {
            0.0
        },
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run: String,
    pub mode: Mode,
    pub target_events_per_second: u64,
    pub duration_seconds: u64,
    pub connections: usize,
    /// Most requests in flight at once; equal to `connections` when every connection was busy
    /// and requests waited for one.
    pub peak_in_flight: u64,
    pub events_sent: u64,
    pub achieved_events_per_second: f64,
    pub answered_as_expected: u64,
    pub unexpected_answers: u64,
    /// The unexpected answers by HTTP status (a refusal such as 429 or 503 stores nothing).
    pub unexpected_by_status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub gateway_latency_ms: Percentiles,
    pub freshness_ms: Percentiles,
    /// Where the freshness comes from.
    pub freshness_source: FreshnessSource,
    /// Events the live feed delivered to the run's subscriptions (none without a feed).
    pub feed_events_seen: Option<u64>,
    /// New events the gateway accepted, each of which must be stored once.
    pub expected_rows: u64,
    pub stored_rows: u64,
    pub rows_exact: bool,
    pub idempotency: ClaimCost,
    pub server: ServerTails,
    /// Connection attempts the kernel dropped on a full listen queue while the run sent, on
    /// every listener of the machine (Linux's `ListenOverflows`; `None` where unreadable). Each
    /// such client waits about a second for its retry, which shows in the latency's tail.
    pub dropped_connects: Option<u64>,
}

/// The kernel's count of connection attempts dropped on a full listen queue, machine-wide.
fn listen_overflows() -> Option<u64> {
    parse_listen_overflows(&std::fs::read_to_string("/proc/net/netstat").ok()?)
}

/// `ListenOverflows` of the `TcpExt:` lines of `/proc/net/netstat` (a line of names, then a
/// line of values).
fn parse_listen_overflows(netstat: &str) -> Option<u64> {
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let column = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// How a run observed each event become visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FreshnessSource {
    /// Its arrival on the live feed (`GET /v1/stream`), as a reader sees it.
    Feed,
    /// Its row's `processed_utc`: the server has no feed, or the feed did not deliver every
    /// stored event.
    ProcessedUtc,
    /// Not measured (`--no-check`).
    None,
}

impl FreshnessSource {
    /// What the freshness measures, as the markdown says it.
    pub fn describe(self) -> &'static str {
        match self {
            FreshnessSource::Feed => "received → seen on the live feed",
            FreshnessSource::ProcessedUtc => "received → processed_utc",
            FreshnessSource::None => "not measured",
        }
    }
}

impl Report {
    /// Every connection was busy at some point, so requests waited for one: the generator's
    /// pool, not only the server, paced that part of the run.
    pub fn pool_saturated(&self) -> bool {
        self.peak_in_flight >= self.connections as u64
    }
}

fn expected_status(kind: Kind) -> u16 {
    match kind {
        Kind::Original | Kind::Duplicate => 202,
        Kind::Conflict => 409,
        Kind::Invalid => 400,
    }
}

/// One token with `role` for each tenant of `run` (`bench-{run}-{index}`), valid for an hour.
fn tenant_tokens(args: &LoadArgs, run: &str, role: ingress::Role) -> anyhow::Result<Vec<String>> {
    let tokens = (0..args.tenants)
        .map(|t| {
            ingress::auth::mint_hs256(
                &args.jwt_secret,
                &format!("bench-{run}-{t}"),
                &[role],
                Duration::from_secs(3600),
                None,
                None,
            )
        })
        .collect::<Result<_, _>>()?;
    Ok(tokens)
}

/// Runs one load; prints progress unless `quiet`. Fails only when the load could not run.
pub async fn run(args: &LoadArgs, quiet: bool) -> anyhow::Result<Report> {
    if args.rate == 0 || args.duration == 0 {
        bail!("--rate and --duration must be positive");
    }
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let tokens = tenant_tokens(args, &run, ingress::Role::Ingest).context("minting tokens")?;
    let client = reqwest::Client::new();
    // Subscribed before the first event is sent, so that the feed delivers every one of them.
    let feed = if args.no_check {
        None
    } else {
        let read_tokens =
            tenant_tokens(args, &run, ingress::Role::Read).context("minting read tokens")?;
        FeedWatch::open(&client, &args.url, &read_tokens).await?
    };
    let pool = Arc::new(HttpPool::new(&args.url)?);
    let bearers: Vec<HeaderValue> = tokens
        .iter()
        .map(|token| HeaderValue::from_str(&format!("Bearer {token}")))
        .collect::<Result<_, _>>()
        .context("token header")?;
    let per_request = match args.mode {
        Mode::Single => 1,
        Mode::Batch => args.batch_size.max(1),
    };
    let requests = args.rate * args.duration / per_request as u64;
    let interval = Duration::from_secs_f64(per_request as f64 / args.rate as f64);
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        120_000_000,
        3,
    )?));
    let tally = Arc::new(Tally::default());
    let slots = Arc::new(tokio::sync::Semaphore::new(args.connections));
    let metrics_before = scrape(&client, &args.url).await;
    let answered: Answered = Arc::default();
    let mut generator = Generator::new(args.clone(), run.clone(), Arc::clone(&answered));
    let overflows_before = listen_overflows();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(requests as usize);
    let mut last_progress = Instant::now();
    for request in 0..requests {
        let intended = started + interval.mul_f64(request as f64);
        tokio::time::sleep_until(intended.into()).await;
        let tenant = generator.pick_tenant();
        let planned: Vec<Planned> = (0..per_request)
            .map(|i| generator.next(request * per_request as u64 + i as u64, tenant))
            .collect();
        let (pool, latency, counts, slots) =
            (pool.clone(), latency.clone(), tally.clone(), slots.clone());
        let answered = Arc::clone(&answered);
        let bearer = bearers[planned[0].tenant].clone();
        let mode = args.mode;
        let connections = args.connections;
        tasks.push(tokio::spawn(async move {
            let _slot = Arc::clone(&slots)
                .acquire_owned()
                .await
                .expect("semaphore open");
            // The connection slots in use are the requests in flight.
            let in_flight = connections - slots.available_permits();
            counts
                .peak_in_flight
                .fetch_max(in_flight as u64, Ordering::Relaxed);
            let outcome = send(&pool, bearer, mode, &planned).await;
            let elapsed = intended.elapsed().as_micros() as u64;
            latency
                .lock()
                .expect("histogram")
                .saturating_record(elapsed.max(1));
            match outcome {
                Ok(answers) => {
                    counts.ok.fetch_add(answers.as_expected, Ordering::Relaxed);
                    counts
                        .accepted
                        .fetch_add(answers.accepted.len() as u64, Ordering::Relaxed);
                    let unexpected: u64 = answers.unexpected.values().sum();
                    counts.unexpected.fetch_add(unexpected, Ordering::Relaxed);
                    let mut by_status = counts.unexpected_by_status.lock().expect("statuses");
                    for (status, events) in answers.unexpected {
                        *by_status.entry(status).or_default() += events;
                    }
                    drop(by_status);
                    let mut answered = answered.lock().expect("answered list");
                    // Later duplicates and conflicts reuse keys the gateway accepted.
                    answered.extend(
                        planned
                            .into_iter()
                            .enumerate()
                            // `accepted` holds indices in ascending order.
                            .filter(|(index, _)| answers.accepted.binary_search(index).is_ok())
                            .map(|(_, p)| (p.key, p.tenant, p.body)),
                    );
                    if answered.len() > 20_000 {
                        answered.drain(..10_000);
                    }
                }
                Err(_) => {
                    counts
                        .errors
                        .fetch_add(planned.len() as u64, Ordering::Relaxed);
                }
            }
        }));
        if !quiet && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(request + 1, requests, &tally);
        }
    }
    for task in tasks {
        task.await?;
    }
    let sending = started.elapsed();
    let dropped_connects = overflows_before
        .zip(listen_overflows())
        .map(|(before, after)| after.saturating_sub(before));
    if !quiet {
        progress(requests, requests, &tally);
        eprintln!();
    }

    let events_sent = requests * per_request as u64;
    let metrics_after = scrape(&client, &args.url).await;
    let expected_rows = tally.accepted.load(Ordering::Relaxed);
    let feed_complete = match &feed {
        Some(feed) => {
            feed.wait_for(expected_rows, Duration::from_secs(args.drain_timeout))
                .await
        }
        None => false,
    };
    let (stored_rows, stored_freshness) = if args.no_check {
        (expected_rows, Histogram::<u64>::new(3)?)
    } else {
        check_rows(args, &run, expected_rows).await?
    };
    let feed_events_seen = feed.as_ref().map(FeedWatch::events_seen);
    let (freshness, freshness_source) = match feed.map(FeedWatch::finish) {
        Some(seen_on_feed) if feed_complete => (seen_on_feed, FreshnessSource::Feed),
        _ if args.no_check => (stored_freshness, FreshnessSource::None),
        _ => (stored_freshness, FreshnessSource::ProcessedUtc),
    };
    let report = Report {
        run: run.clone(),
        mode: args.mode,
        target_events_per_second: args.rate,
        duration_seconds: args.duration,
        connections: args.connections,
        peak_in_flight: tally.peak_in_flight.load(Ordering::Relaxed),
        events_sent,
        achieved_events_per_second: events_sent as f64 / sending.as_secs_f64(),
        answered_as_expected: tally.ok.load(Ordering::Relaxed),
        unexpected_answers: tally.unexpected.load(Ordering::Relaxed),
        unexpected_by_status: tally.unexpected_by_status.lock().expect("statuses").clone(),
        transport_errors: tally.errors.load(Ordering::Relaxed),
        dropped_connects,
        gateway_latency_ms: percentiles(&latency.lock().expect("histogram"), 1000.0),
        freshness_ms: percentiles(&freshness, 1000.0),
        freshness_source,
        feed_events_seen,
        expected_rows,
        stored_rows,
        rows_exact: stored_rows == expected_rows,
        idempotency: claim_cost(&metrics_before, &metrics_after, events_sent),
        server: server_tails(&metrics_before, &metrics_after),
    };
    Ok(report)
}

/// `bench load`: one run, printed as markdown (and JSON to `--out`); fails on a row mismatch.
pub async fn load_command(args: &LoadArgs) -> anyhow::Result<()> {
    let report = run(args, false).await?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.out {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    writeln!(std::io::stdout().lock(), "{}", markdown(&report))?;
    if !report.rows_exact {
        bail!(
            "PostgreSQL holds {} rows; {} were expected",
            report.stored_rows,
            report.expected_rows
        );
    }
    Ok(())
}

fn progress(done: u64, total: u64, tally: &Tally) {
    let width = 40;
    let filled = (done * width / total.max(1)) as usize;
    eprint!(
        "\r[{}{}] {done}/{total} requests, {} unexpected, {} errors",
        "#".repeat(filled),
        " ".repeat(width as usize - filled),
        tally.unexpected.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed)
    );
}

static REPORTED: AtomicU64 = AtomicU64::new(0);

/// Prints the first few unexpected answers, so that a surprise can be looked at.
fn report_unexpected(plan: &Planned, answer: &str) {
    if REPORTED.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!(
            "\nunexpected answer for a {:?} event (key {}): {}",
            plan.kind,
            plan.key,
            answer.chars().take(400).collect::<String>()
        );
    }
}

/// Sends one request; returns how its events were answered.
async fn send(
    pool: &HttpPool,
    bearer: HeaderValue,
    mode: Mode,
    planned: &[Planned],
) -> anyhow::Result<Answers> {
    match mode {
        Mode::Single => {
            let event = &planned[0];
            let headers = [
                (AUTHORIZATION, bearer),
                (
                    HeaderName::from_static("idempotency-key"),
                    HeaderValue::from_str(&event.key)?,
                ),
            ];
            let body = Bytes::from(serde_json::to_vec(&event.body)?);
            let (status, answer) = pool
                .post("/v1/events", "application/json", &headers, body)
                .await?;
            let mut answers = Answers::default();
            answers.note(0, event, status, || {
                format!("{status} {}", String::from_utf8_lossy(&answer))
            });
            Ok(answers)
        }
        Mode::Batch => {
            let mut body = Vec::with_capacity(planned.len() * 400);
            for p in planned {
                serde_json::to_writer(
                    &mut body,
                    &serde_json::json!({"idempotencyKey": p.key, "event": p.body}),
                )?;
                body.push(b'\n');
            }
            let (status, answer) = pool
                .post(
                    "/v1/events:batch",
                    "application/x-ndjson",
                    &[(AUTHORIZATION, bearer)],
                    Bytes::from(body),
                )
                .await?;
            let mut answers = Answers::default();
            if !(200..300).contains(&status) {
                // The whole batch was refused: every event in it got this status.
                for (index, plan) in planned.iter().enumerate() {
                    answers.note(index, plan, status, || {
                        format!("{status} {}", String::from_utf8_lossy(&answer))
                    });
                }
                return Ok(answers);
            }
            let answer: serde_json::Value = serde_json::from_slice(&answer)?;
            let results = answer["results"].as_array().map_or(&[][..], Vec::as_slice);
            for (index, plan) in planned.iter().enumerate() {
                // An event the answer left out counts as unexpected, with status 0.
                let result = results.get(index);
                let status = result
                    .and_then(|r| r["status"].as_u64())
                    .map_or(0, |s| s as u16);
                answers.note(index, plan, status, || {
                    result.map_or("no result for this event".into(), ToString::to_string)
                });
            }
            Ok(answers)
        }
    }
}

/// Waits for the pipeline to store the run's rows; returns the count and the freshness histogram.
async fn check_rows(
    args: &LoadArgs,
    run: &str,
    expected: u64,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let (db, connection) = tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(connection);
    let pattern = format!("bench-{run}-%");
    let deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    let mut stored: i64;
    loop {
        stored = db
            .query_one(
                "SELECT count(*) FROM events WHERE tenant_id LIKE $1",
                &[&pattern],
            )
            .await?
            .get(0);
        if stored as u64 >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut freshness = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let rows = db
        .query(
            "SELECT (extract(epoch FROM processed_utc - received_utc) * 1e6)::bigint \
             FROM events WHERE tenant_id LIKE $1",
            &[&pattern],
        )
        .await?;
    for row in rows {
        freshness.saturating_record(row.get::<_, i64>(0).max(1) as u64);
    }
    Ok((stored as u64, freshness))
}

/// A quantile's bucket bound as the markdown shows it (`–` when nothing was recorded).
pub fn bucket_bound(bound: Option<f64>) -> String {
    match bound {
        None => "–".to_owned(),
        Some(bound) if bound.is_infinite() => "above every bucket".to_owned(),
        Some(bound) => format!("≤ {bound}"),
    }
}

/// Events by status, as "(429 ×300, 503 ×2)"; empty when there are none.
pub fn statuses(by_status: &BTreeMap<u16, u64>) -> String {
    if by_status.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = by_status
        .iter()
        .map(|(status, events)| format!("{status} ×{events}"))
        .collect();
    format!(" ({})", parts.join(", "))
}

pub fn markdown(report: &Report) -> String {
    let row = |name: &str, p: &Percentiles| {
        format!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            p.p50, p.p90, p.p95, p.p99, p.p999, p.max
        )
    };
    format!(
        "## bench run {run} ({mode:?}, target {rate} events/s for {duration} s, {connections} connections)\n\n\
         - at most {peak} requests in flight{pool_note}{dropped_note}\n\
         - sent {sent} events at {achieved:.0} events/s; {ok} answered as expected, {unexpected} unexpected{by_status}, {errors} transport errors\n\
         - rows: {stored} stored, {expected} expected (one per new event accepted) — {verdict}\n\
         - idempotency store: {claims:.0} claims in {claim_statements:.0} statements ({per_statement:.1} per statement), \
         {per_event:.3} statements per event in all, {wait:.2} ms mean wait per operation\n\
         - server side, p99 (histogram bucket bounds): broker acknowledgement {ack} ms, idempotency claim {claim} ms\n\n\
         | ms | p50 | p90 | p95 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|\n{latency}\n{freshness}\n",
        run = report.run,
        mode = report.mode,
        rate = report.target_events_per_second,
        duration = report.duration_seconds,
        connections = report.connections,
        peak = report.peak_in_flight,
        pool_note = if report.pool_saturated() {
            " (every connection busy: requests waited for one)"
        } else {
            ""
        },
        dropped_note = match report.dropped_connects {
            Some(dropped) if dropped > 0 => format!(
                "; the kernel dropped {dropped} connection attempts on a full listen queue \
                 (machine-wide), each retried about a second later"
            ),
            _ => String::new(),
        },
        sent = report.events_sent,
        achieved = report.achieved_events_per_second,
        ok = report.answered_as_expected,
        unexpected = report.unexpected_answers,
        by_status = statuses(&report.unexpected_by_status),
        errors = report.transport_errors,
        stored = report.stored_rows,
        expected = report.expected_rows,
        verdict = if report.rows_exact { "exact" } else { "MISMATCH" },
        claims = report.idempotency.claims,
        claim_statements = report.idempotency.claim_statements,
        per_statement = report.idempotency.claims_per_statement,
        per_event = report.idempotency.statements_per_event,
        wait = report.idempotency.mean_wait_ms,
        ack = bucket_bound(report.server.broker_ack_p99_ms),
        claim = bucket_bound(report.server.claim_wait_p99_ms),
        latency = row("gateway latency", &report.gateway_latency_ms),
        freshness = row(&format!("freshness ({})", report.freshness_source.describe()), &report.freshness_ms),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_overflows_are_read_from_the_tcp_ext_lines() {
        let netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                       TcpExt: 0 47 47\n\
                       IpExt: InNoRoutes ListenOverflows\n\
                       IpExt: 0 9\n";
        assert_eq!(parse_listen_overflows(netstat), Some(47));
        assert_eq!(parse_listen_overflows("IpExt: A\nIpExt: 1\n"), None);
    }

    fn scrape_of(samples: &[(&str, f64)]) -> std::collections::HashMap<String, f64> {
        samples
            .iter()
            .map(|(name, value)| ((*name).to_owned(), *value))
            .collect()
    }

    fn planned(kind: Kind) -> Planned {
        Planned {
            kind,
            key: "k".into(),
            tenant: 0,
            body: serde_json::Value::Null,
        }
    }

    #[test]
    fn only_accepted_originals_are_expected_as_rows() {
        let mut answers = Answers::default();
        answers.note(0, &planned(Kind::Original), 202, String::new);
        answers.note(1, &planned(Kind::Original), 429, String::new);
        answers.note(2, &planned(Kind::Duplicate), 202, String::new);
        answers.note(3, &planned(Kind::Conflict), 409, String::new);
        answers.note(4, &planned(Kind::Original), 503, String::new);
        answers.note(5, &planned(Kind::Original), 429, String::new);
        assert_eq!(answers.as_expected, 3);
        // The duplicate's replay and the refused originals store nothing.
        assert_eq!(answers.accepted, vec![0]);
        assert_eq!(answers.unexpected, BTreeMap::from([(429, 2), (503, 1)]));
        assert_eq!(statuses(&answers.unexpected), " (429 ×2, 503 ×1)");
        assert_eq!(statuses(&BTreeMap::new()), "");
    }

    #[test]
    fn a_bucket_quantile_counts_only_what_the_run_recorded() {
        let before = scrape_of(&[
            (r#"ack_ms_bucket{le="5"}"#, 100.0),
            (r#"ack_ms_bucket{le="25"}"#, 100.0),
            (r#"ack_ms_bucket{le="+Inf"}"#, 100.0),
        ]);
        // The run recorded 1,000 values: 980 up to 5 ms, 15 up to 25 ms, 5 above.
        let after = scrape_of(&[
            (r#"ack_ms_bucket{le="5"}"#, 1080.0),
            (r#"ack_ms_bucket{le="25"}"#, 1095.0),
            (r#"ack_ms_bucket{le="+Inf"}"#, 1100.0),
        ]);
        assert_eq!(bucket_quantile(&before, &after, "ack_ms", 0.5), Some(5.0));
        assert_eq!(bucket_quantile(&before, &after, "ack_ms", 0.99), Some(25.0));
        assert_eq!(
            bucket_quantile(&before, &after, "ack_ms", 0.999),
            Some(f64::INFINITY)
        );
        assert_eq!(bucket_quantile(&before, &before, "ack_ms", 0.99), None);
        assert_eq!(bucket_quantile(&before, &after, "other_ms", 0.99), None);
    }
}
