//! The `sentinel` binary: parses configuration, prepares the database and topics, and runs the
//! chosen roles — the HTTP gateway, the timely dataflow, or both (`sentinel up`).

mod config;
mod dataflow;
mod dead_letter_topic;
mod health;
mod kafka_source;
mod logging;
mod retention_loss;
mod schemas;
mod server;
mod topics;
mod traces;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Parser;
use ingress::{ClaimStore, EventProducer, IngressState};
use operators::topics::TopicNames;
use tokio::sync::Notify;

use crate::config::{Cli, Command, LogFormat, Settings};

/// mimalloc: the request path allocates per event, and glibc malloc was a tenth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use crate::dataflow::DataflowContext;
use crate::kafka_source::SourceSettings;
use crate::server::Readiness;

fn init_logging(format: LogFormat, service: String, masked: Vec<String>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(logging::JsonLogLayer::new(service, masked))
            .init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| {
        let role = match &cli.command {
            Command::Migrate => "migrate",
            Command::Up => "up",
            Command::Ingress => "ingress",
            Command::Process => "process",
            Command::Token(_) => "token",
        };
        format!("sentinel-{role}")
    });
    init_logging(
        cli.settings.log_format,
        service.clone(),
        cli.settings.log_mask_fields.clone(),
    );
    let trace_export = traces::install(&service)?;
    sinks::telemetry::configure_event_types(cli.settings.metrics_event_types.clone());
    let metrics_on = cli.settings.metrics == config::Switch::On;
    ingress::telemetry::set_enabled(metrics_on);
    sinks::telemetry::set_enabled(metrics_on);
    queries::telemetry::set_enabled(metrics_on);
    let runs_dataflow = matches!(cli.command, Command::Up | Command::Process);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.settings.io_threads(runs_dataflow, cores))
        .enable_all()
        .thread_name("sentinel-io")
        .build()
        .context("starting the Tokio runtime")?;
    let settings = cli.settings;
    let outcome = match cli.command {
        Command::Migrate => runtime.block_on(migrate(&settings)),
        Command::Up => run(&runtime, &settings, true, true),
        Command::Ingress => run(&runtime, &settings, true, false),
        Command::Process => run(&runtime, &settings, false, true),
        Command::Token(args) => mint_token(&settings, &args),
    }
    .inspect_err(|err| tracing::error!(error = format!("{err:#}"), "sentinel stopped"));
    if let Some(provider) = trace_export {
        // Flush the spans still batched.
        if let Err(err) = provider.shutdown() {
            tracing::warn!(error = %err, "trace export did not flush");
        }
    }
    outcome
}

/// `sentinel token`: prints an HS256 token signed with SENTINEL_JWT_SECRET.
fn mint_token(settings: &Settings, args: &config::TokenArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let secret = settings
        .jwt_secret
        .as_deref()
        .context("SENTINEL_JWT_SECRET (or --jwt-secret) is needed to sign a token")?;
    let token = ingress::auth::mint_hs256(
        secret,
        &args.tenant,
        &args.roles,
        args.ttl,
        settings.jwt_issuer.as_deref(),
        settings.jwt_audience.as_deref(),
    )
    .context("signing the token")?;
    writeln!(std::io::stdout(), "{token}").context("writing the token")?;
    Ok(())
}

/// Applies migrations, waiting up to 30 s for PostgreSQL to answer.
async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        match sinks::postgres::connect(&settings.database_url).await {
            Ok(client) => break client,
            Err(err) if err.is_retriable() && Instant::now() < deadline => {
                tracing::warn!(error = %operators::error_text::error_chain(&err), "waiting for PostgreSQL");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => return Err(err).context("connecting to PostgreSQL"),
        }
    };
    sinks::postgres::migrate(&mut client)
        .await
        .context("migrating the database")
}

/// A SIGTERM or an interrupt (Ctrl-C).
async fn stop_signal() -> &'static str {
    let terminate = async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            term.recv().await;
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupt",
        _ = terminate => "SIGTERM",
    }
}

/// Resolves when the process should stop: a signal, or a failed dataflow. From then on, a
/// second signal ends the process at once: a shutdown waiting for PostgreSQL or the broker to
/// come back may wait for ever, and what was not committed is read again at the next start.
async fn shutdown_requested(fatal: Arc<Notify>) {
    tokio::select! {
        signal = stop_signal() => tracing::info!(signal, "shutting down; a second signal stops at once"),
        _ = fatal.notified() => tracing::error!("dataflow failed, shutting down"),
    }
    tokio::spawn(async {
        let signal = stop_signal().await;
        tracing::warn!(
            signal,
            "second signal: stopping now; what was not committed is read again at the next start"
        );
        std::process::exit(130);
    });
}

fn run(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
    with_ingress: bool,
    with_dataflow: bool,
) -> anyhow::Result<()> {
    let topics = TopicNames::with_prefix(&settings.topic_prefix);
    let kafka = settings.kafka();
    let authenticator = match with_ingress {
        true => Some(Arc::new(
            ingress::Authenticator::new(settings.auth()).context("configuring authentication")?,
        )),
        false => None,
    };
    runtime.block_on(async {
        migrate(settings).await?;
        topics::ensure_topics(
            &kafka,
            &topics.all(),
            settings.topic_partitions(),
            settings.topic_replication,
        )
        .await
    })?;
    let producer =
        EventProducer::new(&kafka, &settings.producer()).context("creating the producer")?;

    let shutdown = Arc::new(AtomicBool::new(false));
    let running_workers = Arc::new(AtomicUsize::new(0));
    let fatal = Arc::new(Notify::new());
    // One registry for the dataflow and for re-validating replayed dead letters.
    let schemas = schemas::watch(
        settings.schema_dir.clone(),
        settings.unknown_type_policy.into(),
        Duration::from_secs(settings.schema_reload_seconds.max(1)),
    )
    .context("loading the schema directory")?;
    let workers = if with_dataflow {
        let schemas = Arc::clone(&schemas);
        let raw_partitions_read = Arc::new(AtomicI32::new(health::NOT_STARTED));
        let outcome_partitions_read = Arc::new(AtomicI32::new(health::NOT_STARTED));
        let ctx = Arc::new(DataflowContext {
            schemas,
            runtime: runtime.handle().clone(),
            database_url: settings.database_url.clone(),
            kafka: kafka.clone(),
            raw_topic: topics.raw_events.clone(),
            outcomes_topic: topics.gateway_outcomes.clone(),
            slo_window: chrono::TimeDelta::seconds(settings.slo_window_seconds.max(1)),
            freshness_threshold: chrono::TimeDelta::seconds(settings.freshness_threshold_seconds),
            group_id: format!("{}sentinel-pipeline", settings.topic_prefix),
            envelope_limits: settings.envelope_limits(),
            dedup_retention: chrono::TimeDelta::seconds(settings.dedup_retention_seconds),
            idempotency_retention: i64::try_from(settings.idempotency_retention_seconds)
                .ok()
                .and_then(chrono::TimeDelta::try_seconds)
                .unwrap_or(chrono::TimeDelta::MAX),
            dead_letter_topic: Arc::new(dead_letter_topic::DeadLetterTopic::new(
                producer.clone(),
                topics.dead_letters.clone(),
            )),
            source: SourceSettings {
                max_batch: settings.source_batch,
                max_uncommitted: settings.max_uncommitted_records,
                idle_poll: Duration::from_millis(5),
                tick_ms: settings.tick_ms,
            },
            shutdown: Arc::clone(&shutdown),
            running_workers: Arc::clone(&running_workers),
            worker_failed: Arc::new(AtomicBool::new(false)),
            raw_partitions_read: Arc::clone(&raw_partitions_read),
            outcome_partitions_read: Arc::clone(&outcome_partitions_read),
        });
        if settings.process_index == 0 {
            runtime.spawn(health::maintain(
                settings.database_url.clone(),
                kafka.clone(),
                topics.raw_events.clone(),
                Duration::from_millis(settings.health_interval_ms.max(100)),
            ));
        }
        runtime.spawn(health::watch_partitions(
            kafka.clone(),
            vec![
                health::WatchedTopic {
                    topic: topics.raw_events.clone(),
                    partitions_read: raw_partitions_read,
                },
                health::WatchedTopic {
                    topic: topics.gateway_outcomes.clone(),
                    partitions_read: outcome_partitions_read,
                },
            ],
            Duration::from_millis(settings.health_interval_ms.max(100)),
        ));
        let fatal = Arc::clone(&fatal);
        let config = settings.timely_config()?;
        // Forming a cluster waits for every process; HTTP (health, readiness) serves meanwhile.
        let dataflow = std::thread::Builder::new()
            .name("timely".into())
            .spawn(move || -> Vec<String> {
                let fatal_on_start = Arc::clone(&fatal);
                let guards = timely::execute(config, move |worker| {
                    let alarm = dataflow::WorkerAlarm::new(
                        worker.index(),
                        Arc::clone(&ctx.worker_failed),
                        Arc::clone(&fatal),
                    );
                    let outcome = dataflow::run_worker(worker, &ctx);
                    if let Err(err) = &outcome {
                        alarm.raise(&format!("{err:#}"));
                    }
                    outcome.map_err(|err| format!("{err:#}"))
                });
                match guards {
                    Ok(guards) => guards
                        .join()
                        .into_iter()
                        .filter_map(|outcome| match outcome {
                            Ok(Ok(())) => None,
                            Ok(Err(err)) | Err(err) => Some(err),
                        })
                        .collect(),
                    Err(err) => {
                        tracing::error!(error = %err, "the dataflow could not start");
                        fatal_on_start.notify_one();
                        vec![format!("starting the dataflow: {err}")]
                    }
                }
            })
            .context("starting the dataflow thread")?;
        Some(dataflow)
    } else {
        None
    };

    let readiness = Readiness {
        database_url: settings.database_url.clone(),
        producer: producer.clone(),
        topic: topics.raw_events.clone(),
        dataflow: with_dataflow.then(|| (Arc::clone(&running_workers), settings.workers)),
    };
    let outcomes = Arc::new(ingress::outcomes::OutcomeRecorder::new(
        chrono::TimeDelta::seconds(settings.slo_window_seconds.max(1)),
        format!("gateway-{}", uuid::Uuid::new_v4().simple()),
    ));
    let serving = match &authenticator {
        Some(auth) => {
            let _runtime = runtime.enter();
            let pool = queries::read_pool(&settings.database_url, settings.read_pool_size)
                .context("configuring the read connections")?;
            let feed = queries::FeedHub::start(
                settings.database_url.clone(),
                queries::FeedSettings {
                    raw_topic: topics.raw_events.clone(),
                    buffer_batches: settings.sse_buffer,
                    slo_interval: Duration::from_millis(settings.sse_slo_interval_ms.max(100)),
                },
            );
            let serving = queries::ServingState {
                pool,
                auth: Arc::clone(auth),
                feed,
                replay: queries::dead_letters::ReplayContext {
                    producer: producer.clone(),
                    raw_topic: topics.raw_events.clone(),
                    schemas: Arc::clone(&schemas),
                    limits: settings.envelope_limits(),
                },
                query: queries::query::QuerySettings {
                    row_cap: settings.query_row_cap.max(1),
                    byte_cap: settings.query_max_bytes,
                    statement_timeout: Duration::from_millis(settings.query_timeout_ms.max(1)),
                },
                query_slots: queries::query::TenantSlots::new(settings.query_tenant_concurrency),
            };
            let slo = queries::SloState {
                pool: serving.pool.clone(),
                auth: Arc::clone(auth),
                objectives: queries::SloObjectives {
                    ingestion: settings.slo_ingestion_objective,
                    freshness: settings.slo_freshness_objective,
                    ..queries::SloObjectives::default()
                },
            };
            Some((serving, slo))
        }
        None => None,
    };
    let ingress = authenticator.map(|auth| {
        let _runtime = runtime.enter();
        outcomes.start_publishing(
            producer.clone(),
            topics.gateway_outcomes.clone(),
            Duration::from_millis(settings.outcome_flush_ms.max(100)),
        );
        IngressState::new(
            producer.clone(),
            topics.raw_events.clone(),
            settings.ingress(),
            auth,
            ClaimStore::start(settings.idempotency()),
            settings.idempotency_lease(),
        )
        .with_outcomes(Arc::clone(&outcomes))
    });
    let feed = serving.as_ref().map(|(serving, _)| serving.feed.clone());
    let gateway = ingress.clone();
    let app = server::app(ingress, serving, readiness);
    let addr = settings.http_addr;
    runtime.block_on(async {
        let listener = server::listen(addr, settings.listen_backlog)
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, ingress = with_ingress, dataflow = with_dataflow, "sentinel listening");
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_requested(Arc::clone(&fatal)).await;
                // A live-feed response lasts until its client leaves: end them all, or the
                // graceful shutdown would wait for clients that never leave.
                if let Some(feed) = feed {
                    feed.close();
                }
            })
            .await
            .context("serving HTTP")
    })?;

    if let Some(gateway) = gateway {
        // The last requests' events and claims, then their answers' counts, before the
        // dataflow stops.
        let patience = settings.idempotency_lease();
        if !runtime.block_on(gateway.drain(patience)) {
            tracing::warn!(
                patience_ms = patience.as_millis() as u64,
                "requests still being written at shutdown were cut off; their keys free \
                 themselves after their lease"
            );
        }
        runtime.block_on(outcomes.publish(&producer, &topics.gateway_outcomes));
    }
    shutdown.store(true, Ordering::Release);
    producer.flush(Duration::from_secs(5));
    let mut failures = Vec::new();
    if let Some(dataflow) = workers {
        match dataflow.join() {
            Ok(errors) => failures.extend(errors),
            Err(_) => failures.push("the dataflow thread panicked".to_owned()),
        }
    }
    if failures.is_empty() {
        tracing::info!("sentinel stopped cleanly");
        Ok(())
    } else {
        Err(anyhow!("dataflow workers failed: {}", failures.join("; ")))
    }
}
