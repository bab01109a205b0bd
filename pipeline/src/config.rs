//! Command line and environment configuration of the `sentinel` binary.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ingress::kafka::ProducerSettings;
use ingress::KafkaSettings;

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
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
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

    /// Partitions of the topics Sentinel creates when they are missing.
    #[arg(
        long,
        env = "SENTINEL_TOPIC_PARTITIONS",
        default_value_t = 4,
        global = true
    )]
    pub topic_partitions: i32,

    /// Replication factor of the topics Sentinel creates when they are missing.
    #[arg(
        long,
        env = "SENTINEL_TOPIC_REPLICATION",
        default_value_t = 1,
        global = true
    )]
    pub topic_replication: i32,

    /// Timely worker threads running the dataflow.
    #[arg(long, env = "SENTINEL_WORKERS", default_value_t = 2, global = true)]
    pub workers: usize,

    /// How long a produced event may wait for the broker's acknowledgement before the gateway
    /// answers 503, in milliseconds.
    #[arg(
        long,
        env = "SENTINEL_PRODUCE_TIMEOUT_MS",
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

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SENTINEL_MAX_BODY_BYTES", default_value_t = 1024 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// Most records one source poll feeds into the dataflow as one batch.
    #[arg(
        long,
        env = "SENTINEL_SOURCE_BATCH",
        default_value_t = 5_000,
        global = true
    )]
    pub source_batch: usize,

    /// Log format.
    #[arg(
        long,
        env = "SENTINEL_LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    pub log_format: LogFormat,
}

/// librdkafka properties given on the command line or in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaOptions(pub Vec<(String, String)>);

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
    Ok(KafkaOptions(pairs))
}

impl Settings {
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
            "DATABASE_URL",
            "KAFKA_BROKERS",
            "SENTINEL_WORKERS",
            "SENTINEL_TOPIC_PREFIX",
            "SENTINEL_TOPIC_PARTITIONS",
            "SENTINEL_KAFKA_OPTIONS",
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
}
