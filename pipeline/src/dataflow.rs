//! The dataflow wiring of one timely worker: Kafka source → decode → commit to PostgreSQL, with
//! the commit point at each closed timestamp (events, dead letters and offsets in one
//! transaction), and the worker loop that drives it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use ingress::KafkaSettings;
use operators::decode::decode_records;
use operators::dedup::{dedup_observed, Deduplicated, RefusedIdentities};
use operators::record::{DeadLetter, EventRow, PartitionProgress, SourceRecord};
use operators::slo_window::{FreshnessObjective, GatewayOutcomes, PublishedSample};
use operators::stream_state::{stream_state, StreamState};
use sinks::postgres::{self, CommitBatch, EventSink, WriterSettings};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concatenate, OkErr, Operator};
use timely::dataflow::StreamVec;
use timely::worker::Worker;
use tokio::sync::mpsc;

use crate::kafka_source::{
    assigned_consumer, kafka_source, owned_partitions, SourceMessage, SourceSettings,
    TopicAssignment, UncommittedRecords,
};
use crate::topics::partition_count;

/// Everything a worker needs, shared by all workers of the process.
pub struct DataflowContext {
    /// Tokio runtime that runs the PostgreSQL writers.
    pub runtime: tokio::runtime::Handle,
    /// PostgreSQL URL.
    pub database_url: String,
    /// Broker settings.
    pub kafka: KafkaSettings,
    /// The raw events topic (prefixed).
    pub raw_topic: String,
    /// The gateway outcomes topic (prefixed).
    pub outcomes_topic: String,
    /// Width of the SLO windows.
    pub slo_window: chrono::TimeDelta,
    /// Freshness objective: processed − received at most this.
    pub freshness_threshold: chrono::TimeDelta,
    /// Consumer group id (used for nothing but librdkafka's bookkeeping: assignment is static).
    pub group_id: String,
    /// Source tuning.
    pub source: SourceSettings,
    /// Envelope rules (the gateway's).
    pub envelope_limits: operators::envelope::EnvelopeLimits,
    /// How long de-duplication remembers an event.
    pub dedup_retention: chrono::TimeDelta,
    /// How long the gateway holds an idempotency key (its claims' retention): de-duplication
    /// matches keys no longer than this.
    pub idempotency_retention: chrono::TimeDelta,
    /// The payload schemas, reloaded when their directory changes.
    pub schemas: operators::validate::SharedRegistry,
    /// Where dead letters are published besides the table.
    pub dead_letter_topic: Arc<dyn sinks::postgres::DeadLetterPublisher>,
    /// Set to stop the sources; the workers then drain and exit.
    pub shutdown: Arc<AtomicBool>,
    /// Number of workers whose dataflow is running.
    pub running_workers: Arc<AtomicUsize>,
    /// Set when a worker of this process failed or panicked: the others stop too, since they
    /// would wait for its progress forever (nothing would commit again) and the process could
    /// not exit.
    pub worker_failed: Arc<AtomicBool>,
    /// The fewest partitions of the raw topic a worker of this process found when it started
    /// ([`crate::health::NOT_STARTED`] before): partitions added to the topic later are read
    /// only after a restart, which [`crate::health::watch_partitions`] reports
    /// (`source_partitions_unread`).
    pub raw_partitions_read: Arc<AtomicI32>,
    /// The same for the gateway outcomes topic.
    pub outcome_partitions_read: Arc<AtomicI32>,
}

/// Held by a worker's thread while it runs: a worker that fails (returns an error, or its
/// thread unwinds from a panic) marks the process's workers failed and wakes the shutdown.
/// Without it a panic would leave the process up, its gateway accepting, with a dataflow that
/// never commits.
pub struct WorkerAlarm {
    worker: usize,
    worker_failed: Arc<AtomicBool>,
    fatal: Arc<tokio::sync::Notify>,
}

impl WorkerAlarm {
    /// An alarm for worker `worker`, raising `worker_failed` and waking `fatal`.
    pub fn new(
        worker: usize,
        worker_failed: Arc<AtomicBool>,
        fatal: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            worker,
            worker_failed,
            fatal,
        }
    }

    /// The worker failed: every worker of the process stops, and so does the process.
    pub fn raise(&self, why: &str) {
        tracing::error!(worker = self.worker, error = why, "worker failed");
        self.worker_failed.store(true, Ordering::Release);
        self.fatal.notify_one();
    }
}

impl Drop for WorkerAlarm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.raise("panicked");
        }
    }
}

/// What flows into the commit operator.
#[derive(Debug, Clone)]
enum Effect {
    Event(EventRow),
    StreamState(StreamState),
    Outcome(PublishedSample),
    Duplicate,
    DeadLetter(DeadLetter),
    Progress(PartitionProgress),
}

fn add_effect(batch: &mut CommitBatch, effect: Effect) {
    match effect {
        Effect::Event(row) => batch.events.push(row),
        Effect::Duplicate => batch.duplicates_dropped += 1,
        Effect::StreamState(state) => batch.stream_states.push(state),
        Effect::Outcome(sample) => batch.gateway_outcomes.push(sample),
        Effect::DeadLetter(dead) => batch.dead_letters.push(dead),
        Effect::Progress(progress) => batch.progress.push(progress),
    }
}

/// Runs one worker until shutdown, or until its writer fails for good.
pub fn run_worker(worker: &mut Worker, ctx: &DataflowContext) -> anyhow::Result<()> {
    let (index, peers) = (worker.index(), worker.peers());
    let partitions = partition_count(&ctx.kafka, &ctx.raw_topic, Duration::from_secs(60))?;
    ctx.raw_partitions_read
        .fetch_min(partitions, Ordering::AcqRel);
    let owned = owned_partitions(partitions, index, peers);
    if owned.is_empty() {
        tracing::warn!(
            worker = index,
            topic = %ctx.raw_topic,
            partitions,
            workers = peers,
            "this worker owns no partition and reads no event: the topic has fewer partitions \
             than the cluster has workers; add partitions to put every worker to use"
        );
    }
    let outcome_partitions =
        partition_count(&ctx.kafka, &ctx.outcomes_topic, Duration::from_secs(60))?;
    ctx.outcome_partitions_read
        .fetch_min(outcome_partitions, Ordering::AcqRel);
    let owned_outcomes = owned_partitions(outcome_partitions, index, peers);
    let (stored, stored_outcomes, remembered, stream_states) = ctx.runtime.block_on(async {
        let client = postgres::connect(&ctx.database_url).await?;
        let offsets = postgres::load_offsets(&client, &ctx.raw_topic).await?;
        let outcome_offsets = postgres::load_offsets(&client, &ctx.outcomes_topic).await?;
        let remembered = postgres::load_dedup_state(&client, &owned, ctx.dedup_retention).await?;
        let states = postgres::load_stream_states(&client, &owned).await?;
        Ok::<_, sinks::postgres::SinkError>((offsets, outcome_offsets, remembered, states))
    })?;
    let refused = RefusedIdentities::default();
    let dedup_state = remembered
        .matching_keys_for(ctx.idempotency_retention)
        .forgetting(refused.clone());
    tracing::info!(
        worker = index,
        partitions = ?owned_partitions(partitions, index, peers),
        remembered = dedup_state.len(),
        "worker starting"
    );
    let consumer = assigned_consumer(
        &ctx.kafka,
        &ctx.group_id,
        &[
            TopicAssignment {
                topic: ctx.raw_topic.clone(),
                partitions: owned,
                stored,
            },
            TopicAssignment {
                topic: ctx.outcomes_topic.clone(),
                partitions: owned_outcomes,
                stored: stored_outcomes,
            },
        ],
    )?;

    let (batches_tx, batches_rx) = mpsc::channel::<CommitBatch>(2);
    let sink = EventSink::new(ctx.database_url.clone(), ctx.raw_topic.clone())
        .with_dead_letter_publisher(Arc::clone(&ctx.dead_letter_topic))
        .with_refused_identities(refused)
        .with_freshness_objective(FreshnessObjective {
            window: ctx.slo_window,
            threshold: ctx.freshness_threshold,
        });
    let worker_index = index;
    let mut writer = Some(ctx.runtime.spawn(postgres::run_writer(
        sink,
        batches_rx,
        WriterSettings::default(),
        move |batch, report| {
            tracing::debug!(
                worker = worker_index,
                events = report.events_written,
                duplicates = report.duplicates_skipped,
                dead_letters = report.dead_letters_written,
                progress = ?batch.progress,
                "batch committed"
            );
        },
    )));
    let batches_tx = Rc::new(RefCell::new(Some(batches_tx)));

    let uncommitted = Rc::new(UncommittedRecords::default());
    worker.dataflow::<u64, _, _>(|scope| {
        let messages = kafka_source(
            scope,
            consumer,
            ctx.source.clone(),
            Arc::clone(&ctx.shutdown),
            Rc::clone(&uncommitted),
        );
        let (records, progress): (
            StreamVec<u64, SourceRecord>,
            StreamVec<u64, PartitionProgress>,
        ) = messages.ok_err(|message| match message {
            SourceMessage::Record(record) => Ok(record),
            SourceMessage::Progress(progress) => Err(progress),
        });
        let raw_topic = ctx.raw_topic.clone();
        let (records, outcome_records): (
            StreamVec<u64, SourceRecord>,
            StreamVec<u64, SourceRecord>,
        ) = records.ok_err(move |record| {
            if *record.topic == *raw_topic {
                Ok(record)
            } else {
                Err(record)
            }
        });
        let outcome_samples = outcome_records.flat_map(|record| {
            let parsed = record
                .value
                .as_deref()
                .map(serde_json::from_slice::<GatewayOutcomes>);
            match parsed {
                Some(Ok(outcomes)) => match outcomes.published_sample() {
                    Ok(sample) => Some(sample),
                    Err(err) => {
                        tracing::error!(
                            partition = record.partition,
                            offset = record.offset,
                            gateway = %outcomes.gateway,
                            error = %err,
                            "gateway outcomes record not counted"
                        );
                        None
                    }
                },
                _ => {
                    tracing::error!(
                        partition = record.partition,
                        offset = record.offset,
                        "unreadable gateway outcomes record skipped"
                    );
                    None
                }
            }
        });
        let (events, dead_letters) = decode_records(
            records,
            ctx.envelope_limits.clone(),
            Some(Arc::clone(&ctx.schemas)),
        );
        let worker_label = worker_index.to_string();
        let observed = dedup_observed(events, dedup_state, move |entries| {
            sinks::telemetry::DedupStateSize {
                worker: &worker_label,
                entries,
            }
            .emit()
        });
        let (unique, rejected) = observed.ok_err(|verdict| match verdict {
            Deduplicated::Unique(row) => Ok(row),
            Deduplicated::Duplicate(_) => Err(Effect::Duplicate),
            Deduplicated::Conflict(dead) => Err(Effect::DeadLetter(dead)),
        });
        let (unique, states) = stream_state(unique, stream_states);
        // The writer adds the outcomes to their windows, each publication once, and samples
        // freshness, since it alone knows which events it stored.
        let effects = scope.concatenate([
            unique.map(Effect::Event),
            states.map(Effect::StreamState),
            outcome_samples.map(Effect::Outcome),
            rejected,
            dead_letters.map(Effect::DeadLetter),
            progress.map(Effect::Progress),
        ]);
        commit_at_closed_times(effects, Rc::clone(&batches_tx), Rc::clone(&uncommitted));
    });
    ctx.running_workers.fetch_add(1, Ordering::AcqRel);

    let outcome = loop {
        if writer.as_ref().is_some_and(|w| w.is_finished()) {
            break Err(anyhow!("the PostgreSQL writer stopped"));
        }
        if ctx.worker_failed.load(Ordering::Acquire) {
            break Err(anyhow!(
                "another worker failed: this one stops with it (what it has not committed is read again at restart)"
            ));
        }
        if !worker.step_or_park(Some(Duration::from_millis(100))) {
            break Ok(());
        }
    };
    ctx.running_workers.fetch_sub(1, Ordering::AcqRel);
    // Hang up on the writer so that it drains what is queued, then wait for it.
    batches_tx.borrow_mut().take();
    let written = ctx
        .runtime
        .block_on(writer.take().expect("writer handle is present"))
        .context("the PostgreSQL writer panicked")?;
    written.context("the PostgreSQL writer failed")?;
    outcome
}

/// The commit point: gathers each timestamp's effects and, once the frontier has passed the
/// timestamp, hands them with their source positions to the writer as one batch. Blocks when
/// the writer is two batches behind, which is the dataflow's backpressure.
fn commit_at_closed_times(
    effects: StreamVec<'_, u64, Effect>,
    batches: Rc<RefCell<Option<mpsc::Sender<CommitBatch>>>>,
    uncommitted: Rc<UncommittedRecords>,
) {
    let mut pending: BTreeMap<u64, CommitBatch> = BTreeMap::new();
    effects.sink(Pipeline, "CommitToPostgres", move |(input, frontier)| {
        input.for_each(|cap, data| {
            let time = *cap.least().expect("an input stamp holds a time");
            let batch = pending.entry(time).or_default();
            for effect in data.drain(..) {
                add_effect(batch, effect);
            }
        });
        let mut ready = CommitBatch::default();
        while let Some(entry) = pending.first_entry() {
            if frontier.less_equal(entry.key()) {
                break;
            }
            ready.absorb(entry.remove());
        }
        if !ready.is_empty() {
            if let Some(sender) = batches.borrow().as_ref() {
                if sender.blocking_send(ready).is_err() {
                    tracing::error!("PostgreSQL writer is gone; batch not committed");
                }
            }
        }
        // Every time before the frontier is now with the writer (or had no effects).
        uncommitted.handed_over_before(frontier.frontier().first().copied().unwrap_or(u64::MAX));
    });
}
