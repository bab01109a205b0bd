//! `ceilings`: what this machine allows at all, measured with the same tools as Sentinel —
//! the generator against a trivial axum handler (HTTP), COPY of the same rows into a copy of
//! the `events` table (PostgreSQL), and raw produce with Sentinel's producer settings (broker).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::routing::post;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::find_max::{self, FindMaxArgs};
use crate::load::Mode;

/// Ceiling settings.
#[derive(Debug, Clone, clap::Args)]
pub struct CeilingArgs {
    #[command(flatten)]
    pub search: FindMaxArgs,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Rows (and records) for the PostgreSQL and broker ceilings.
    #[arg(long, default_value_t = 200_000)]
    pub rows: usize,
    /// Rows per COPY (the pipeline commits batches of about this size).
    #[arg(long, default_value_t = 5_000)]
    pub copy_batch: usize,
}

/// The measured ceilings.
#[derive(Debug, Clone, Serialize)]
pub struct Ceilings {
    /// Highest sustained rate of the generator against a trivial handler, single events.
    pub http_single: Option<f64>,
    /// The same in batch mode, events/s.
    pub http_batch: Option<f64>,
    /// Whether the single-mode search ended without breaking a bound (the ceiling is higher).
    pub http_single_unbroken: bool,
    /// The same for batch mode.
    pub http_batch_unbroken: bool,
    /// Rows/s of COPY into a copy of `events` (with its indexes).
    pub postgres_copy: f64,
    /// Records/s produced with acks=all and idempotence.
    pub broker_produce: f64,
}

async fn trivial_server() -> anyhow::Result<String> {
    let app = axum::Router::new()
        .route(
            "/v1/events",
            post(|| async {
                (
                    axum::http::StatusCode::ACCEPTED,
                    r#"{"eventId":"00000000-0000-0000-0000-000000000000","receivedAtUtc":"","traceId":""}"#,
                )
            }),
        )
        .route(
            "/v1/events:batch",
            // One accepted result per NDJSON line, shaped like Sentinel's answer.
            post(|body: axum::body::Bytes| async move {
                let lines = body
                    .split(|&byte| byte == b'\n')
                    .filter(|line| !line.is_empty())
                    .count();
                let mut answer = String::with_capacity(16 + lines * 16);
                answer.push_str(r#"{"results":["#);
                for line in 0..lines {
                    if line > 0 {
                        answer.push(',');
                    }
                    answer.push_str(r#"{"status":202}"#);
                }
                answer.push_str("]}");
                answer
            }),
        );
    // Its own multi-threaded runtime, like Sentinel's: the generator runs on one thread. It
    // listens with the backlog Sentinel ships with (`SENTINEL_LISTEN_BACKLOG`), so that both
    // queue a burst of new connections alike.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpSocket::new_v4().and_then(|socket| {
                socket.bind(([127, 0, 0, 1], 0).into())?;
                socket.listen(4096)
            });
            let listener = match listener.and_then(|l| l.local_addr().map(|addr| (l, addr))) {
                Ok((listener, addr)) => {
                    let _ = bound_tx.send(Ok(addr));
                    listener
                }
                Err(err) => {
                    let _ = bound_tx.send(Err(err));
                    return;
                }
            };
            let _ = axum::serve(listener, app).await;
        })
    });
    let addr = bound_rx
        .recv()
        .context("the trivial server's thread ended before it listened")??;
    Ok(format!("http://{addr}"))
}

/// The HTTP ceiling for one mode.
async fn http_ceiling(args: &CeilingArgs, mode: Mode) -> anyhow::Result<(Option<f64>, bool)> {
    let mut search = args.search.clone();
    search.load.url = trivial_server().await?;
    search.load.no_check = true;
    search.load.mode = mode;
    let found = find_max::search(&search, None).await?;
    Ok((found.max_sustained, found.lowest_broken_rate.is_none()))
}

/// COPY of rows shaped like Sentinel's into a temporary copy of `events`.
async fn postgres_ceiling(args: &CeilingArgs) -> anyhow::Result<f64> {
    let (mut db, connection) =
        tokio_postgres::connect(&args.search.load.database_url, tokio_postgres::NoTls)
            .await
            .context("connecting to PostgreSQL")?;
    tokio::spawn(connection);
    // A database no Sentinel has started on yet gets Sentinel's schema, so that the ceiling
    // measures the same `events`; a database that has one is left as it is.
    let has_events: bool = db
        .query_one("SELECT to_regclass('events') IS NOT NULL", &[])
        .await
        .context("looking for the events table")?
        .get(0);
    if !has_events {
        sinks::postgres::migrate(&mut db)
            .await
            .context("migrating the database to Sentinel's schema")?;
    }
    db.batch_execute("CREATE TEMP TABLE ceiling_events (LIKE events INCLUDING ALL)")
        .await
        .context("creating the ceiling table")?;
    let filler = "x".repeat(args.search.load.payload_bytes.saturating_sub(60).max(1));
    let now = chrono::Utc::now().to_rfc3339();
    let started = Instant::now();
    let mut written = 0;
    while written < args.rows {
        let rows = args.copy_batch.min(args.rows - written);
        let mut text = String::with_capacity(rows * 400);
        for i in written..written + rows {
            text.push_str(&format!(
                "{}\tbench-ceiling-{}\tbench\tbench.event\tstream-{}\t{now}\t1\t{{\"seq\": {i}, \"filler\": \"{filler}\"}}\t{now}\t{now}\t\\N\t{}\t{i}\t{}\t\\N\n",
                uuid::Uuid::new_v4(),
                i % 3,
                i % 100,
                i % 4,
                "0".repeat(64),
            ));
        }
        let sink = db
            .copy_in(
                "COPY ceiling_events (id, tenant_id, source, type, stream_key, timestamp_utc, \
                 schema_version, payload_jsonb, received_utc, processed_utc, trace_id, \
                 source_partition, source_offset, payload_hash, idempotency_key) FROM STDIN",
            )
            .await?;
        use futures::SinkExt;
        let mut sink = Box::pin(sink);
        sink.send(bytes::Bytes::from(text)).await?;
        sink.as_mut().finish().await?;
        written += rows;
    }
    Ok(written as f64 / started.elapsed().as_secs_f64())
}

/// Partitions of the raw topic a Sentinel as shipped creates: one per worker, of its two.
const SHIPPED_PARTITIONS: i32 = 2;

/// Raw produce with the gateway's producer settings, into a topic of as many partitions.
async fn broker_ceiling(args: &CeilingArgs) -> anyhow::Result<f64> {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &args.kafka_brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .context("creating the producer")?;
    let topic = "bench.ceiling.v1";
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &args.kafka_brokers)
            .create()?;
    let _ = admin
        .create_topics(
            &[rdkafka::admin::NewTopic::new(
                topic,
                SHIPPED_PARTITIONS,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await;
    let value = vec![b'x'; args.search.load.payload_bytes + 200];
    let started = Instant::now();
    let mut inflight = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for i in 0..args.rows {
        let key = format!("k{}", i % 1000);
        let producer = producer.clone();
        let value = value.clone();
        inflight.push(async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
        if inflight.len() >= 20_000 {
            inflight.next().await.transpose()?;
        }
    }
    while let Some(result) = inflight.next().await {
        result?;
    }
    Ok(args.rows as f64 / started.elapsed().as_secs_f64())
}

/// Measures every ceiling.
pub async fn measure(args: &CeilingArgs) -> anyhow::Result<Ceilings> {
    eprintln!("ceilings: HTTP (single)");
    let (http_single, http_single_unbroken) = http_ceiling(args, Mode::Single).await?;
    eprintln!("ceilings: HTTP (batch)");
    let (http_batch, http_batch_unbroken) = http_ceiling(args, Mode::Batch).await?;
    eprintln!("ceilings: PostgreSQL COPY");
    let postgres_copy = postgres_ceiling(args).await?;
    eprintln!("ceilings: broker produce");
    let broker_produce = broker_ceiling(args).await?;
    Ok(Ceilings {
        http_single,
        http_batch,
        http_single_unbroken,
        http_batch_unbroken,
        postgres_copy,
        broker_produce,
    })
}

/// `bench ceilings`.
pub async fn command(args: &CeilingArgs) -> anyhow::Result<()> {
    let ceilings = measure(args).await?;
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&ceilings)?
    )?;
    Ok(())
}
