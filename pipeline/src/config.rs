//! Command line and environment configuration of the `sentinel` binary.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ingress::kafka::ProducerSettings;
use ingress::KafkaSettings;

/// The longest span a `…_SECONDS` setting may give: ten years.
const MAX_SECONDS: i64 = 10 * 365 * 86_400;

/// Sentinel: an event ingestion gateway and stream-processing pipeline.
#[derive(Debug, Parser)]
#[command(name = "sentinel", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Settings shared by every role.
    #[command(flatten)]
    pub settings: Settings,
}

/// The roles of the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process: the HTTP gateway and the dataflow.
    Up,
    /// Run only the HTTP gateway (POST /v1/events, /health, /ready).
    Ingress,
    /// Run only the dataflow (Kafka → operators → PostgreSQL), with /health and /ready.
    Process,
    /// Apply the database migrations and exit.
    Migrate,
    /// Mint an HS256 token signed with SENTINEL_JWT_SECRET, for local use.
    Token(TokenArgs),
}

/// Arguments of `sentinel token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The tenant the token acts for.
    #[arg(long)]
    pub tenant: String,
    /// A role to grant (ingest, read, admin); repeat for several.
    #[arg(long = "role", required = true)]
    pub roles: Vec<ingress::Role>,
    /// Lifetime, e.g. 90s, 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
}

/// Parses `<number><unit>` with unit s, m, h or d.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: s, m, h or d"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?}: use s, m, h or d")),
    };
    number
        .checked_mul(per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long a duration"))
}

/// Policy for event types without a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UnknownTypes {
    /// Accept them unchecked.
    Accept,
    /// Dead-letter them (reason unknown_event_type).
    #[value(name = "dead_letter")]
    DeadLetter,
}

impl From<UnknownTypes> for operators::validate::UnknownTypePolicy {
    fn from(policy: UnknownTypes) -> Self {
        match policy {
            UnknownTypes::Accept => Self::Accept,
            UnknownTypes::DeadLetter => Self::DeadLetter,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// Settings shared by every role; every flag can also come from its environment variable.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address of the one HTTP listener (gateway, health, and every later HTTP surface).
    #[arg(
        long,
        env = "SENTINEL_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub http_addr: SocketAddr,

    /// Connections the kernel queues on the HTTP listener before Sentinel accepts them (capped
    /// by `net.core.somaxconn`). A full queue drops a client's connection attempt, which its
    /// kernel retries only after a second: room for a burst of clients connecting at once.
    #[arg(
        long,
        env = "SENTINEL_LISTEN_BACKLOG",
        value_parser = clap::value_parser!(u32).range(1..),
        default_value_t = 4096,
        global = true
    )]
    pub listen_backlog: u32,

    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/sentinel",
        global = true
    )]
    pub database_url: String,

    /// Kafka bootstrap servers (comma-separated host:port).
    #[arg(
        long,
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub kafka_brokers: String,

    /// Extra librdkafka properties as `key=value` pairs separated by commas, e.g.
    /// `security.protocol=SASL_SSL,sasl.mechanism=PLAIN`. A comma-separated value stays whole
    /// (`debug=broker,fetch`) because each pair starts with a `key=`.
    #[arg(long, env = "SENTINEL_KAFKA_OPTIONS", value_parser = parse_key_values, global = true)]
    pub kafka_options: Option<KafkaOptions>,

    /// Prefix of every topic name, so that several deployments can share one cluster.
    #[arg(long, env = "SENTINEL_TOPIC_PREFIX", default_value = "", global = true)]
    pub topic_prefix: String,

    /// Partitions of the topics Sentinel creates when they are missing. Default: one per timely
    /// worker of the cluster (SENTINEL_WORKERS × the SENTINEL_TIMELY_HOSTS, at least one), so
    /// each worker reads one partition and the producer's records gather into the fewest and
    /// largest batches: every partition a produce request touches is a batch of its own for the
    /// broker to append. Give more to leave room for workers added later; a worker beyond the
    /// partition count reads nothing.
    #[arg(
        long,
        env = "SENTINEL_TOPIC_PARTITIONS",
        value_parser = clap::value_parser!(i32).range(1..),
        global = true
    )]
    pub topic_partitions: Option<i32>,

    /// Replication factor of the topics Sentinel creates when they are missing.
    #[arg(
        long,
        env = "SENTINEL_TOPIC_REPLICATION",
        default_value_t = 1,
        global = true
    )]
    pub topic_replication: i32,

    /// Timely worker threads running the dataflow. Each owns a consumer, its partitions and a
    /// PostgreSQL writer; where the dataflow does not need a second core, 1 costs less CPU per
    /// single event (on 2 cores: 13-15% of the whole machine's).
    #[arg(
        long,
        env = "SENTINEL_WORKERS",
        default_value_t = 2,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        global = true
    )]
    pub workers: usize,

    /// Threads of the async runtime that serves HTTP and talks to PostgreSQL and the broker.
    /// Default: when this process runs the dataflow (`up`, `process`), the cores its timely
    /// workers leave (at least one); otherwise every core. More threads than free cores only
    /// add wake-ups: on 2 cores shared with 2 workers, 2 threads cost up to half again as much
    /// CPU per event as 1 and answer slower.
    #[arg(long, env = "SENTINEL_IO_THREADS", global = true)]
    pub io_threads: Option<usize>,

    /// Every process of a timely cluster, `host:port` comma-separated, in process-index order.
    /// Empty: this process alone. Partitions spread over all workers of all processes.
    #[arg(
        long,
        env = "SENTINEL_TIMELY_HOSTS",
        value_delimiter = ',',
        global = true
    )]
    pub timely_hosts: Vec<String>,

    /// This process's index in SENTINEL_TIMELY_HOSTS.
    #[arg(
        long,
        env = "SENTINEL_PROCESS_INDEX",
        default_value_t = 0,
        global = true
    )]
    pub process_index: usize,

    /// How long a produced event may wait for the broker's acknowledgement before the gateway
    /// answers 503, in milliseconds.
    #[arg(
        long,
        env = "SENTINEL_PRODUCE_TIMEOUT_MS",
        // librdkafka reads 0 as "never time out": requests would wait out a broker outage.
        value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS as u64 * 1_000),
        default_value_t = 10_000,
        global = true
    )]
    pub produce_timeout_ms: u64,

    /// How long the producer may hold records to batch them, in milliseconds.
    #[arg(
        long,
        env = "SENTINEL_PRODUCE_LINGER_MS",
        default_value_t = 5,
        global = true
    )]
    pub produce_linger_ms: u64,

    /// Largest accepted body of POST /v1/events, in bytes.
    #[arg(long, env = "SENTINEL_MAX_BODY_BYTES", default_value_t = 1024 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// Largest accepted body of POST /v1/events:batch, in bytes.
    #[arg(long, env = "SENTINEL_MAX_BATCH_BYTES", default_value_t = 8 * 1024 * 1024, global = true)]
    pub max_batch_bytes: usize,

    /// Most events in one batch request.
    #[arg(
        long,
        env = "SENTINEL_MAX_BATCH_EVENTS",
        default_value_t = 1_000,
        global = true
    )]
    pub max_batch_events: usize,

    /// Most events the gateway writes at once; past it requests get 429.
    #[arg(
        long,
        env = "SENTINEL_MAX_IN_FLIGHT",
        default_value_t = 20_000,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        global = true
    )]
    pub max_in_flight: usize,

    /// How far in the future an event's timestampUtc may lie, in seconds.
    #[arg(
        long,
        env = "SENTINEL_MAX_FUTURE_SKEW_SECONDS",
        value_parser = clap::value_parser!(i64).range(0..=MAX_SECONDS),
        default_value_t = 300,
        global = true
    )]
    pub max_future_skew_seconds: i64,

    /// Deepest nesting of objects and arrays in a payload.
    #[arg(
        long,
        env = "SENTINEL_MAX_PAYLOAD_DEPTH",
        default_value_t = 32,
        global = true
    )]
    pub max_payload_depth: usize,

    /// Shared secret (32 bytes or more) verifying HS256 bearer tokens.
    #[arg(
        long,
        env = "SENTINEL_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<String>,

    /// JWKS file with the public keys verifying RS256/ES256 bearer tokens.
    #[arg(long, env = "SENTINEL_JWKS_FILE", global = true)]
    pub jwks_file: Option<std::path::PathBuf>,

    /// Required token issuer (iss), when set.
    #[arg(long, env = "SENTINEL_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// Required token audience (aud), when set.
    #[arg(long, env = "SENTINEL_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// Clock leeway for token exp/nbf, in seconds.
    #[arg(
        long,
        env = "SENTINEL_JWT_LEEWAY_SECONDS",
        value_parser = clap::value_parser!(u64).range(0..=3_600),
        default_value_t = 30,
        global = true
    )]
    pub jwt_leeway_seconds: u64,

    /// Directory of the payload JSON Schemas (reloaded when it changes).
    #[arg(
        long,
        env = "SENTINEL_SCHEMA_DIR",
        default_value = "infra/schemas",
        global = true
    )]
    pub schema_dir: std::path::PathBuf,

    /// What to do with events whose type has no schema.
    #[arg(
        long,
        env = "SENTINEL_UNKNOWN_TYPE_POLICY",
        value_enum,
        default_value = "accept",
        global = true
    )]
    pub unknown_type_policy: UnknownTypes,

    /// How often the schema directory is checked for changes, in seconds.
    #[arg(
        long,
        env = "SENTINEL_SCHEMA_RELOAD_SECONDS",
        default_value_t = 2,
        global = true
    )]
    pub schema_reload_seconds: u64,

    /// SLO A objective: share of write answers that are not 5xx, over 30 days.
    #[arg(
        long,
        env = "SENTINEL_SLO_INGESTION_OBJECTIVE",
        value_parser = parse_objective,
        default_value_t = 0.999,
        global = true
    )]
    pub slo_ingestion_objective: f64,

    /// SLO B objective: share of events processed within the freshness threshold, over 7 days.
    #[arg(
        long,
        env = "SENTINEL_SLO_FRESHNESS_OBJECTIVE",
        value_parser = parse_objective,
        default_value_t = 0.99,
        global = true
    )]
    pub slo_freshness_objective: f64,

    /// Width of the tumbling SLO windows, in seconds.
    #[arg(
        long,
        env = "SENTINEL_SLO_WINDOW_SECONDS",
        default_value_t = 60,
        global = true
    )]
    pub slo_window_seconds: i64,

    /// Freshness objective: an event is fresh when processed within this many seconds of receipt.
    #[arg(
        long,
        env = "SENTINEL_FRESHNESS_THRESHOLD_SECONDS",
        value_parser = clap::value_parser!(i64).range(0..=MAX_SECONDS),
        default_value_t = 10,
        global = true
    )]
    pub freshness_threshold_seconds: i64,

    /// How often the gateway publishes its answer counts to the outcomes topic, in milliseconds.
    #[arg(
        long,
        env = "SENTINEL_OUTCOME_FLUSH_MS",
        default_value_t = 1000,
        global = true
    )]
    pub outcome_flush_ms: u64,

    /// Connections of the read side's pool (feed back-fill, queries, dead letters, SLO status;
    /// the feed's hub has a connection of its own).
    #[arg(
        long,
        env = "SENTINEL_READ_POOL_SIZE",
        default_value_t = 16,
        global = true
    )]
    pub read_pool_size: usize,

    /// Most rows a query returns (more are cut and flagged `truncated`).
    #[arg(
        long,
        env = "SENTINEL_QUERY_ROW_CAP",
        default_value_t = 10_000,
        global = true
    )]
    pub query_row_cap: usize,

    /// Most bytes of rows (rendered as JSON) a query answer holds (more are cut and flagged
    /// `truncated`): what one query may hold of the gateway's memory.
    #[arg(
        long,
        env = "SENTINEL_QUERY_MAX_BYTES",
        default_value_t = 32 * 1024 * 1024,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        global = true
    )]
    pub query_max_bytes: usize,

    /// Most queries one tenant runs at once; more get 429, so that no tenant holds the whole
    /// read pool (SENTINEL_READ_POOL_SIZE).
    #[arg(
        long,
        env = "SENTINEL_QUERY_TENANT_CONCURRENCY",
        default_value_t = 4,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        global = true
    )]
    pub query_tenant_concurrency: usize,

    /// PostgreSQL statement timeout of each query, in milliseconds.
    #[arg(
        long,
        env = "SENTINEL_QUERY_TIMEOUT_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub query_timeout_ms: u64,

    /// Metrics: `on`, or `off` to measure what they cost (`/metrics` then stays at zero).
    #[arg(
        long,
        env = "SENTINEL_METRICS",
        value_enum,
        default_value = "on",
        global = true
    )]
    pub metrics: Switch,

    /// Event types with a metric label of their own (comma-separated); others are `other`.
    /// Unset: the first 20 types seen.
    #[arg(
        long,
        env = "SENTINEL_METRICS_EVENT_TYPES",
        value_delimiter = ',',
        global = true
    )]
    pub metrics_event_types: Vec<String>,

    /// How often the dataflow refreshes `pipeline_health`, in milliseconds.
    #[arg(
        long,
        env = "SENTINEL_HEALTH_INTERVAL_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub health_interval_ms: u64,

    /// Commits a live-feed subscriber may fall behind before it is evicted with `event: lagged`.
    #[arg(
        long,
        env = "SENTINEL_SSE_BUFFER",
        default_value_t = 256,
        global = true
    )]
    pub sse_buffer: usize,

    /// How often the live feed checks the SLO windows for new counts, in milliseconds.
    #[arg(
        long,
        env = "SENTINEL_SSE_SLO_INTERVAL_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub sse_slo_interval_ms: u64,

    /// How long the dataflow's de-duplication remembers an event, in seconds.
    #[arg(
        long,
        env = "SENTINEL_DEDUP_RETENTION_SECONDS",
        value_parser = clap::value_parser!(i64).range(0..=MAX_SECONDS),
        default_value_t = 86_400,
        global = true
    )]
    pub dedup_retention_seconds: i64,

    /// How often expired idempotency claims are purged, in seconds.
    #[arg(
        long,
        env = "SENTINEL_IDEMPOTENCY_PURGE_INTERVAL_SECONDS",
        default_value_t = 60,
        global = true
    )]
    pub idempotency_purge_interval_seconds: u64,

    /// How long a group of few idempotency claims waits for more before it is written, in
    /// milliseconds (0: never waits): fewer, larger transactions for a little gateway latency.
    #[arg(
        long,
        env = "SENTINEL_IDEMPOTENCY_LINGER_MS",
        default_value_t = 1,
        global = true
    )]
    pub idempotency_linger_ms: u64,

    /// How long idempotency keys are remembered and replayed, in seconds.
    #[arg(
        long,
        env = "SENTINEL_IDEMPOTENCY_RETENTION_SECONDS",
        default_value_t = 86_400,
        global = true
    )]
    pub idempotency_retention_seconds: u64,

    /// Width of a dataflow timestamp, in milliseconds: records polled within one tick are
    /// processed and committed together (larger: fewer, bigger transactions; smaller: fresher).
    #[arg(long, env = "SENTINEL_TICK_MS", default_value_t = 20, global = true)]
    pub tick_ms: u64,

    /// Most records one source poll feeds into the dataflow as one batch.
    #[arg(
        long,
        env = "SENTINEL_SOURCE_BATCH",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 5_000,
        global = true
    )]
    pub source_batch: usize,

    /// Most records a worker holds read but not yet handed to its writer; past it its source
    /// stops reading until the commits catch up.
    #[arg(
        long,
        env = "SENTINEL_MAX_UNCOMMITTED_RECORDS",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
        default_value_t = 200_000,
        global = true
    )]
    pub max_uncommitted_records: usize,

    /// Log format.
    #[arg(
        long,
        env = "SENTINEL_LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    pub log_format: LogFormat,

    /// Log fields whose values are replaced by a short digest (comma-separated contract names,
    /// e.g. `idempotencyKey,streamKey`). Payloads are never logged.
    #[arg(
        long,
        env = "SENTINEL_LOG_MASK_FIELDS",
        value_delimiter = ',',
        global = true
    )]
    pub log_mask_fields: Vec<String>,
}

/// librdkafka properties given on the command line or in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaOptions(pub Vec<(String, String)>);

/// librdkafka properties Sentinel sets itself because its guarantees rest on them, each with
/// why; `SENTINEL_KAFKA_OPTIONS` may not change them.
const GUARDED_KAFKA_OPTIONS: &[(&str, &str)] = &[
    ("acks", "a 202 waits for every in-sync replica (acks=all)"),
    (
        "request.required.acks",
        "a 202 waits for every in-sync replica (acks=all)",
    ),
    (
        "enable.idempotence",
        "the producer's retries never duplicate or reorder a record",
    ),
    (
        "message.timeout.ms",
        "the idempotency lease outlasts a produce; set SENTINEL_PRODUCE_TIMEOUT_MS",
    ),
    (
        "delivery.timeout.ms",
        "the idempotency lease outlasts a produce; set SENTINEL_PRODUCE_TIMEOUT_MS",
    ),
    (
        "enable.auto.commit",
        "offsets are committed with the results they produced, in PostgreSQL",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed with the results they produced, in PostgreSQL",
    ),
    (
        "auto.offset.reset",
        "a partition without a committed offset is read from its beginning",
    ),
    (
        "partitioner",
        "each stream's events go to one partition (murmur2, as Kafka's Java client)",
    ),
];

fn parse_key_values(text: &str) -> Result<KafkaOptions, String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for segment in text.split(',') {
        match segment.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                pairs.push((key.trim().to_owned(), value.to_owned()))
            }
            Some(_) => return Err(format!("{segment:?} has an empty key")),
            None => match pairs.last_mut() {
                Some((_, value)) => {
                    value.push(',');
                    value.push_str(segment);
                }
                None => return Err(format!("{segment:?} is not key=value")),
            },
        }
    }
    for (key, _) in &pairs {
        // librdkafka hands a property it does not know globally to the default topic
        // configuration, which strips a `topic.` prefix: `topic.auto.offset.reset` sets
        // `auto.offset.reset`.
        let mut property = key.as_str();
        while let Some(rest) = property.strip_prefix("topic.") {
            property = rest;
        }
        if let Some((_, why)) = GUARDED_KAFKA_OPTIONS
            .iter()
            .find(|(guarded, _)| *guarded == property)
        {
            return Err(format!(
                "{key} is set by Sentinel and cannot be overridden: {why}"
            ));
        }
    }
    Ok(KafkaOptions(pairs))
}

/// An SLO objective: a share strictly between 0 and 1, so that its error budget (1 - objective)
/// is a share too and burn rates are finite.
fn parse_objective(text: &str) -> Result<f64, String> {
    let objective: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if objective > 0.0 && objective < 1.0 {
        Ok(objective)
    } else {
        Err(format!(
            "{text} is not a share strictly between 0 and 1 (0.999 is 99.9%)"
        ))
    }
}

impl Settings {
    /// The timely configuration: this process alone, or one process of a cluster.
    pub fn timely_config(&self) -> anyhow::Result<timely::Config> {
        let workers = self.workers.max(1);
        if self.process_index >= self.timely_hosts.len().max(1) {
            anyhow::bail!(
                "SENTINEL_PROCESS_INDEX {} is not an index of the {} SENTINEL_TIMELY_HOSTS \
                 (a process alone is index 0)",
                self.process_index,
                self.timely_hosts.len()
            );
        }
        if self.timely_hosts.len() <= 1 {
            return Ok(timely::Config::process(workers));
        }
        if self.process_index >= self.timely_hosts.len() {
            anyhow::bail!(
                "SENTINEL_PROCESS_INDEX {} is not an index of the {} SENTINEL_TIMELY_HOSTS",
                self.process_index,
                self.timely_hosts.len()
            );
        }
        Ok(timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: workers,
                process: self.process_index,
                addresses: self.timely_hosts.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        })
    }

    /// The timely workers of the whole cluster: SENTINEL_WORKERS in each of its processes.
    pub fn cluster_workers(&self) -> usize {
        self.workers.max(1) * self.timely_hosts.len().max(1)
    }

    /// Partitions of the topics Sentinel creates: SENTINEL_TOPIC_PARTITIONS, else one per
    /// worker of the cluster.
    pub fn topic_partitions(&self) -> i32 {
        self.topic_partitions
            .unwrap_or_else(|| i32::try_from(self.cluster_workers()).unwrap_or(i32::MAX))
    }

    /// Threads of the async runtime: SENTINEL_IO_THREADS, else the cores the dataflow's workers
    /// leave when this process runs them, else every core.
    pub fn io_threads(&self, runs_dataflow: bool, cores: usize) -> usize {
        match (self.io_threads, runs_dataflow) {
            (Some(threads), _) => threads.max(1),
            (None, true) => cores.saturating_sub(self.workers).max(1),
            (None, false) => cores.max(1),
        }
    }

    /// Broker connection settings.
    pub fn kafka(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.kafka_brokers.clone(),
            options: self
                .kafka_options
                .as_ref()
                .map(|options| options.0.clone())
                .unwrap_or_default(),
        }
    }

    /// Token verification.
    pub fn auth(&self) -> ingress::auth::AuthSettings {
        ingress::auth::AuthSettings {
            hs256_secret: self.jwt_secret.clone(),
            jwks_file: self.jwks_file.clone(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: Duration::from_secs(self.jwt_leeway_seconds),
        }
    }

    /// Envelope rules, shared by the gateway and the dataflow.
    pub fn envelope_limits(&self) -> operators::envelope::EnvelopeLimits {
        operators::envelope::EnvelopeLimits {
            max_depth: self.max_payload_depth,
            max_future_skew: chrono::TimeDelta::seconds(self.max_future_skew_seconds),
        }
    }

    /// Gateway limits.
    pub fn ingress(&self) -> ingress::IngressSettings {
        ingress::IngressSettings {
            max_body_bytes: self.max_body_bytes,
            max_batch_bytes: self.max_batch_bytes,
            max_batch_events: self.max_batch_events,
            max_in_flight: self.max_in_flight,
            limits: self.envelope_limits(),
        }
    }

    /// How long an in-flight idempotency claim is protected: as long as a publish can last and
    /// a margin. A publish may wait up to the produce timeout for room in the producer's queue
    /// (the queue fills with large events), then up to the produce timeout for the broker's
    /// acknowledgement; a retry must not take the claim over while the first may still write.
    pub fn idempotency_lease(&self) -> Duration {
        2 * Duration::from_millis(self.produce_timeout_ms) + Duration::from_secs(5)
    }

    /// Idempotency store settings.
    pub fn idempotency(&self) -> ingress::idempotency::IdempotencySettings {
        ingress::idempotency::IdempotencySettings {
            database_url: self.database_url.clone(),
            retention: Duration::from_secs(self.idempotency_retention_seconds),
            lease: self.idempotency_lease(),
            max_batch: 1_000,
            linger: Duration::from_millis(self.idempotency_linger_ms),
            purge_interval: Duration::from_secs(self.idempotency_purge_interval_seconds.max(1)),
        }
    }

    /// Producer tuning.
    pub fn producer(&self) -> ProducerSettings {
        ProducerSettings {
            delivery_timeout: Duration::from_millis(self.produce_timeout_ms),
            linger: Duration::from_millis(self.produce_linger_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed_and_help_lists_every_variable() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for var in [
            "SENTINEL_HTTP_ADDR",
            "SENTINEL_LISTEN_BACKLOG",
            "DATABASE_URL",
            "KAFKA_BROKERS",
            "SENTINEL_WORKERS",
            "SENTINEL_TOPIC_PREFIX",
            "SENTINEL_TOPIC_PARTITIONS",
            "SENTINEL_KAFKA_OPTIONS",
            "SENTINEL_JWT_SECRET",
            "SENTINEL_JWKS_FILE",
            "SENTINEL_IDEMPOTENCY_RETENTION_SECONDS",
            "SENTINEL_MAX_IN_FLIGHT",
            "SENTINEL_IO_THREADS",
        ] {
            assert!(help.contains(var), "--help does not mention {var}");
        }
    }

    #[test]
    fn kafka_options_parse_as_key_value_pairs() {
        let cli = Cli::try_parse_from([
            "sentinel",
            "up",
            "--kafka-options",
            "security.protocol=SSL,debug=broker,fetch,sasl.mechanism=PLAIN",
        ])
        .unwrap();
        assert_eq!(
            cli.settings.kafka().options,
            vec![
                ("security.protocol".into(), "SSL".into()),
                ("debug".into(), "broker,fetch".into()),
                ("sasl.mechanism".into(), "PLAIN".into())
            ]
        );
        assert!(Cli::try_parse_from(["sentinel", "up", "--kafka-options", "novalue"]).is_err());
    }

    #[test]
    fn the_claim_lease_outlasts_a_publish_and_the_in_flight_budget_is_at_least_one() {
        let settings = Cli::try_parse_from(["sentinel", "up", "--produce-timeout-ms", "2000"])
            .unwrap()
            .settings;
        // Up to 2 s waiting for room in the producer's queue, 2 s for the broker, and 5 s more.
        assert_eq!(settings.idempotency_lease(), Duration::from_secs(9));
        assert!(Cli::try_parse_from(["sentinel", "up", "--max-in-flight", "0"]).is_err());
    }

    #[test]
    fn kafka_options_cannot_weaken_the_guarantees() {
        for option in [
            "acks=1",
            "security.protocol=SSL,enable.idempotence=false",
            "message.timeout.ms=600000",
            "auto.offset.reset=latest",
            "topic.auto.offset.reset=latest",
            "topic.message.timeout.ms=600000",
            "enable.auto.commit=true",
            "partitioner=random",
        ] {
            let err = Cli::try_parse_from(["sentinel", "up", "--kafka-options", option])
                .expect_err(option)
                .to_string();
            assert!(
                err.contains("is set by Sentinel and cannot be overridden"),
                "{err}"
            );
        }
        assert!(Cli::try_parse_from([
            "sentinel",
            "up",
            "--kafka-options",
            "message.max.bytes=4000,linger.ms=5"
        ])
        .is_ok());
    }

    #[test]
    fn io_threads_default_to_the_cores_the_workers_leave() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().settings;
        let up = parse(&["sentinel", "up", "--workers", "2"]);
        assert_eq!(up.io_threads(true, 2), 1);
        assert_eq!(up.io_threads(true, 8), 6);
        assert_eq!(up.io_threads(false, 8), 8);
        let chosen = parse(&["sentinel", "up", "--io-threads", "3"]);
        assert_eq!(chosen.io_threads(true, 2), 3);
        assert_eq!(
            parse(&["sentinel", "up", "--io-threads", "0"]).io_threads(true, 4),
            1
        );
    }

    #[test]
    fn topics_get_one_partition_per_worker_of_the_cluster_unless_told() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().settings;
        assert_eq!(
            parse(&["sentinel", "up", "--workers", "2"]).topic_partitions(),
            2
        );
        let cluster = parse(&[
            "sentinel",
            "up",
            "--workers",
            "3",
            "--timely-hosts",
            "127.0.0.1:2101,127.0.0.1:2102",
        ]);
        assert_eq!(cluster.topic_partitions(), 6);
        assert!(Cli::try_parse_from(["sentinel", "up", "--workers", "0"]).is_err());
        // (flag, a value it refuses, one it takes): the value taken shows the flag exists, so
        // that the refusal is the value's.
        for (flag, refused, taken) in [
            ("--produce-timeout-ms", "0", "1"),
            ("--jwt-leeway-seconds", "18446744073709551615", "3600"),
            ("--slo-ingestion-objective", "1", "0.95"),
            ("--slo-freshness-objective", "0", "0.5"),
            ("--slo-freshness-objective", "1.5", "0.999"),
            ("--slo-ingestion-objective", "NaN", "0.9"),
        ] {
            let parse = |value| Cli::try_parse_from(["sentinel", "up", flag, value]);
            assert!(parse(refused).is_err(), "{flag} {refused}");
            assert!(parse(taken).is_ok(), "{flag} {taken}");
        }
        let chosen = parse(&["sentinel", "up", "--topic-partitions", "12"]);
        assert_eq!(chosen.topic_partitions(), 12);
        assert!(Cli::try_parse_from(["sentinel", "up", "--topic-partitions", "0"]).is_err());
    }

    #[test]
    fn counts_and_spans_out_of_range_are_refused() {
        for args in [
            ["--source-batch", "0"],
            ["--max-future-skew-seconds", "-1"],
            ["--dedup-retention-seconds", "9223372036854775807"],
            ["--freshness-threshold-seconds", "-10"],
        ] {
            let mut argv = vec!["sentinel", "up"];
            argv.extend(args);
            assert!(Cli::try_parse_from(&argv).is_err(), "{args:?} was accepted");
        }
        let settings = Cli::try_parse_from(["sentinel", "up", "--max-future-skew-seconds", "0"])
            .unwrap()
            .settings;
        assert_eq!(settings.max_future_skew_seconds, 0);
    }

    #[test]
    fn a_process_index_outside_the_cluster_is_refused() {
        let alone = |index: &str| {
            Cli::try_parse_from(["sentinel", "up", "--process-index", index])
                .unwrap()
                .settings
                .timely_config()
        };
        assert!(alone("0").is_ok());
        let err = alone("1").unwrap_err().to_string();
        assert!(err.contains("SENTINEL_PROCESS_INDEX 1"), "{err}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert!(parse_duration("99999999999999999d")
            .unwrap_err()
            .contains("too long"));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn token_subcommand_takes_tenant_roles_and_ttl() {
        let cli = Cli::try_parse_from([
            "sentinel", "token", "--tenant", "acme", "--role", "ingest", "--role", "read", "--ttl",
            "2h",
        ])
        .unwrap();
        let Command::Token(args) = cli.command else {
            panic!("not the token command")
        };
        assert_eq!(args.tenant, "acme");
        assert_eq!(args.roles, vec![ingress::Role::Ingest, ingress::Role::Read]);
        assert_eq!(args.ttl, Duration::from_secs(7200));
        assert!(
            Cli::try_parse_from(["sentinel", "token", "--tenant", "a", "--role", "boss"]).is_err()
        );
    }
}
