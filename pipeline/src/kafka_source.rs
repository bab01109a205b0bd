//! The Kafka source operator: each worker reads the partitions it owns (`p % peers == index`)
//! by assignment, from the offsets stored beside the effects, and emits records plus the
//! position just past them.
//!
//! Timestamps are wall-clock milliseconds, rounded down to a tick (`SENTINEL_TICK_MS`). Progress
//! is global across workers, so a worker whose partitions are idle must still advance its
//! capability, or it would hold back every other worker's commits: each invocation moves the
//! capability up to the current tick.
//!
//! A worker reads at most [`SourceSettings::max_uncommitted`] records ahead of what its commit
//! has handed to the writer: progress is shared, so while one worker is blocked on a slow commit no worker's
//! time closes, and the others would otherwise keep reading into memory without bound.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ingress::KafkaSettings;
use operators::headers::RecordHeaders;
use operators::record::{PartitionProgress, SourceRecord};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};

use crate::retention_loss::{report_stored_position, SourceContext};

/// What the source emits: records, and per batch the position reached in each partition.
#[derive(Debug, Clone)]
pub enum SourceMessage {
    /// A consumed record.
    Record(SourceRecord),
    /// Every record of the partition below `next_offset` has been emitted.
    Progress(PartitionProgress),
}

/// The partitions a worker owns: those whose number modulo the worker count is its index.
pub fn owned_partitions(partition_count: i32, worker_index: usize, peers: usize) -> Vec<i32> {
    (0..partition_count)
        .filter(|p| (*p as usize) % peers == worker_index)
        .collect()
}

/// The partitions of one topic a worker reads, and where each resumes.
#[derive(Debug, Clone)]
pub struct TopicAssignment {
    /// The topic.
    pub topic: String,
    /// Its partitions this worker owns.
    pub partitions: Vec<i32>,
    /// Stored next offsets (the beginning where none is stored).
    pub stored: BTreeMap<i32, i64>,
}

/// The consumer's `fetch.wait.max.ms`. A broker that indexes its log (Apache Kafka, Redpanda)
/// answers a fetch as soon as records are ready, so this only paces the fetches of an idle
/// partition. tansu 0.6.0 waits it out even when records are ready (and returns only what was
/// there when the fetch began), so there a record waits one to two of it before the dataflow
/// sees it: 50 ms rather than 100 took about 100 ms off freshness p99 on the development broker.
/// It costs tansu there: it lists every batch a partition holds on every fetch, so twice the
/// fetches cost it about a third more CPU per event over a minute of single events (23 → 31 µs,
/// the whole machine +4%), and more as its topic grows. `SENTINEL_KAFKA_OPTIONS` overrides it.
const CONSUMER_FETCH_WAIT_MS: &str = "50";

/// A consumer statically assigned to the given topics' partitions, starting at the stored
/// offsets. No consumer group membership: assignment is static.
pub fn assigned_consumer(
    kafka: &KafkaSettings,
    group_id: &str,
    assignments: &[TopicAssignment],
) -> anyhow::Result<BaseConsumer<SourceContext>> {
    let mut config = kafka.client_config();
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", CONSUMER_FETCH_WAIT_MS);
    for (key, value) in &kafka.options {
        config.set(key, value);
    }
    // Offset resets are warnings; the context counts lost records from them, whatever the
    // log filter lets through.
    if (config.log_level as i32) < (RDKafkaLogLevel::Warning as i32) {
        config.set_log_level(RDKafkaLogLevel::Warning);
    }
    let consumer: BaseConsumer<SourceContext> = config
        .create_with_context(SourceContext::default())
        .context("creating the Kafka consumer")?;
    let mut assignment = TopicPartitionList::new();
    for topic in assignments {
        for &partition in &topic.partitions {
            let offset = topic
                .stored
                .get(&partition)
                .map_or(Offset::Beginning, |&next| Offset::Offset(next));
            assignment
                .add_partition_offset(&topic.topic, partition, offset)
                .context("building the partition assignment")?;
        }
    }
    // One deadline for every check: a partition without a leader must not hold the start (and,
    // progress being shared, every worker's commits) for a timeout per partition.
    let deadline = Instant::now() + Duration::from_secs(10);
    'checks: for topic in assignments {
        for (&partition, &next) in &topic.stored {
            if !topic.partitions.contains(&partition) {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    "the stored offsets were not all checked against the partitions' watermarks \
                     within 10 s: records lost to retention may go unreported"
                );
                break 'checks;
            }
            report_stored_position(&consumer, &topic.topic, partition, next, left);
        }
    }
    consumer
        .assign(&assignment)
        .context("assigning partitions")?;
    Ok(consumer)
}

/// Settings of the source operator.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// Most records per batch (one timely timestamp).
    pub max_batch: usize,
    /// Most records read and not yet handed to the writer; past it the source pauses.
    pub max_uncommitted: usize,
    /// How long to wait before polling again when nothing was available.
    pub idle_poll: Duration,
    /// Width of a timestamp, in milliseconds: records polled within one tick commit together.
    pub tick_ms: u64,
}

/// The records a worker's source has read, by timestamp, until its commit hands their time to
/// the writer. Shared by the source and the commit operator of one worker (one thread).
#[derive(Debug, Default)]
pub struct UncommittedRecords {
    by_time: RefCell<BTreeMap<u64, usize>>,
    total: Cell<usize>,
}

impl UncommittedRecords {
    /// The source read `records` at `time`.
    pub fn read(&self, time: u64, records: usize) {
        if records > 0 {
            *self.by_time.borrow_mut().entry(time).or_default() += records;
            self.total.set(self.total.get() + records);
        }
    }

    /// The commit handed every time before `frontier` to the writer.
    pub fn handed_over_before(&self, frontier: u64) {
        let mut by_time = self.by_time.borrow_mut();
        while let Some(entry) = by_time.first_entry() {
            if *entry.key() >= frontier {
                break;
            }
            self.total.set(self.total.get() - entry.remove());
        }
    }

    /// Records read and not yet handed over.
    pub fn total(&self) -> usize {
        self.total.get()
    }
}

/// Builds the source: polls `consumer` without blocking the worker, emits each batch at its own
/// timestamp (never earlier than the wall clock), and stops (releasing its capability) once
/// `shutdown` is set. It reads nothing (and still advances its time) while `uncommitted` holds
/// [`SourceSettings::max_uncommitted`] records.
pub fn kafka_source<'scope>(
    scope: Scope<'scope, u64>,
    consumer: BaseConsumer<SourceContext>,
    settings: SourceSettings,
    shutdown: Arc<AtomicBool>,
    uncommitted: Rc<UncommittedRecords>,
) -> StreamVec<'scope, u64, SourceMessage> {
    source::<_, CapacityContainerBuilder<Vec<SourceMessage>>, _, _>(
        scope,
        "KafkaSource",
        move |capability, info| {
            let activator = scope.activator_for(info.address);
            let mut capability = Some(capability);
            let mut last_error_log: Option<Instant> = None;
            let mut last_pause_log: Option<Instant> = None;
            let mut topics = TopicNamesInterned::default();
            move |output| {
                let Some(cap) = capability.as_mut() else {
                    return;
                };
                if shutdown.load(Ordering::Acquire) {
                    capability = None;
                    return;
                }
                // Time moves in ticks: everything polled within one tick shares a timestamp, so
                // the operators downstream (and the commit) run once per tick, not per poll.
                let tick = settings.tick_ms.max(1);
                let now = wall_clock_millis() / tick * tick;
                if *cap.time() < now {
                    cap.downgrade(&now);
                }
                if uncommitted.total() >= settings.max_uncommitted {
                    if last_pause_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(
                            uncommitted = uncommitted.total(),
                            "reading paused: the commits are behind (a slow PostgreSQL, or \
                             another worker blocked on its commit)"
                        );
                        last_pause_log = Some(Instant::now());
                    }
                    activator.activate_after(settings.idle_poll);
                    return;
                }
                let mut reached: BTreeMap<(Arc<str>, i32), i64> = BTreeMap::new();
                let mut emitted = 0;
                {
                    let mut session = output.session(&*cap);
                    while emitted < settings.max_batch {
                        match consumer.poll(Duration::ZERO) {
                            None => break,
                            Some(Ok(message)) => {
                                consumer.context().read_at(
                                    message.topic(),
                                    message.partition(),
                                    message.offset(),
                                );
                                let topic = topics.intern(message.topic());
                                reached.insert(
                                    (Arc::clone(&topic), message.partition()),
                                    message.offset() + 1,
                                );
                                session.give(SourceMessage::Record(source_record(topic, &message)));
                                emitted += 1;
                            }
                            Some(Err(err)) => {
                                let quiet = last_error_log
                                    .is_some_and(|at| at.elapsed() < Duration::from_secs(10));
                                if !quiet {
                                    tracing::warn!(error = %err, "kafka consume error");
                                    last_error_log = Some(Instant::now());
                                }
                                break;
                            }
                        }
                    }
                    uncommitted.read(*cap.time(), emitted);
                    for ((topic, partition), next_offset) in reached {
                        session.give(SourceMessage::Progress(PartitionProgress {
                            topic: topic.to_string(),
                            partition,
                            next_offset,
                        }));
                    }
                }
                if emitted == settings.max_batch {
                    // More is waiting: poll again at once.
                    activator.activate();
                } else {
                    activator.activate_after(settings.idle_poll);
                }
            }
        },
    )
}

/// Milliseconds since the Unix epoch, by a clock that never goes back: the dataflow's
/// timestamp. It is the wall clock when the process first read it, advanced by the monotonic
/// clock since: a wall clock stepped back (NTP, a resumed VM) would otherwise hold the
/// dataflow's time, and so every commit, until it caught up again.
pub fn wall_clock_millis() -> u64 {
    static ANCHOR: std::sync::OnceLock<(u64, Instant)> = std::sync::OnceLock::new();
    let (wall, at) = ANCHOR.get_or_init(|| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        (wall, Instant::now())
    });
    wall + at.elapsed().as_millis() as u64
}

/// Topic names shared by every record of a topic, so that a record carries a pointer, not a copy.
#[derive(Default)]
struct TopicNamesInterned {
    names: Vec<Arc<str>>,
}

impl TopicNamesInterned {
    fn intern(&mut self, topic: &str) -> Arc<str> {
        if let Some(name) = self.names.iter().find(|name| &***name == topic) {
            return Arc::clone(name);
        }
        let name: Arc<str> = Arc::from(topic);
        self.names.push(Arc::clone(&name));
        name
    }
}

/// The headers `read` decodes, or none if it panics. rdkafka 0.39 panics on a header name that
/// is not UTF-8 (it unwraps the conversion), which a producer of another kind can write: read
/// unguarded, that one record would stop its worker at every restart. Sentinel's own headers
/// have ASCII names, so a record with such a name is judged without headers.
fn headers_or_none(
    read: impl FnOnce() -> RecordHeaders,
    partition: i32,
    offset: i64,
) -> RecordHeaders {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|_| {
        tracing::warn!(
            partition,
            offset,
            "a record's header could not be read (a name that is not UTF-8); its headers are ignored"
        );
        RecordHeaders::default()
    })
}

fn source_record(topic: Arc<str>, message: &rdkafka::message::BorrowedMessage<'_>) -> SourceRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers_or_none(
                || RecordHeaders::from_pairs(headers.iter().map(|h| (h.key, h.value))),
                message.partition(),
                message.offset(),
            )
        })
        .unwrap_or_default();
    let timestamp_ms = message.timestamp().to_millis();
    if operators::spans::enabled() && headers.traceparent.is_some() {
        consume_span(&topic, message, timestamp_ms, headers.traceparent);
    }
    SourceRecord {
        topic,
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms,
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// The `pipeline.consume` span of one record: from its broker timestamp (when it was appended)
/// to the moment this worker read it — the time it waited in the topic.
fn consume_span(
    topic: &str,
    message: &rdkafka::message::BorrowedMessage<'_>,
    timestamp_ms: Option<i64>,
    parent: Option<operators::trace_context::TraceContext>,
) {
    let now = std::time::SystemTime::now();
    let appended = timestamp_ms
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms))
        .filter(|at| *at <= now)
        .unwrap_or(now);
    let mut attributes = operators::spans::messaging_attributes(
        "receive",
        topic,
        message.partition(),
        message.offset(),
    );
    attributes.push(opentelemetry::KeyValue::new(
        "messaging.consumer.group.name",
        "sentinel-pipeline",
    ));
    operators::spans::Hop::new(
        "pipeline.consume",
        opentelemetry::trace::SpanKind::Consumer,
        parent,
        appended,
        now,
    )
    .with(attributes)
    .record();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_spread_by_modulo() {
        assert_eq!(owned_partitions(4, 0, 2), vec![0, 2]);
        assert_eq!(owned_partitions(4, 1, 2), vec![1, 3]);
        assert_eq!(owned_partitions(3, 2, 4), vec![2]);
        assert_eq!(
            owned_partitions(3, 3, 4),
            Vec::<i32>::new(),
            "more workers than partitions"
        );
        let all: Vec<i32> = (0..3).flat_map(|i| owned_partitions(7, i, 3)).collect();
        assert_eq!(all.len(), 7, "every partition has exactly one owner");
    }

    #[test]
    fn uncommitted_records_are_counted_until_their_time_is_handed_over() {
        let uncommitted = UncommittedRecords::default();
        uncommitted.read(20, 5);
        uncommitted.read(20, 3);
        uncommitted.read(40, 7);
        uncommitted.read(60, 0);
        assert_eq!(uncommitted.total(), 15);
        uncommitted.handed_over_before(20);
        assert_eq!(uncommitted.total(), 15, "time 20 is not closed yet");
        uncommitted.handed_over_before(40);
        assert_eq!(uncommitted.total(), 7);
        uncommitted.handed_over_before(u64::MAX);
        assert_eq!(uncommitted.total(), 0);
    }

    #[test]
    fn headers_that_cannot_be_read_are_ignored_not_fatal() {
        // As rdkafka's `CStr::to_str().unwrap()` does on a header name that is not UTF-8.
        let unreadable = || -> RecordHeaders { panic!("invalid utf-8 sequence of 1 bytes") };
        assert_eq!(headers_or_none(unreadable, 0, 7), RecordHeaders::default());
        let readable = || {
            RecordHeaders::from_pairs([(operators::headers::IDEMPOTENCY_KEY, Some(&b"k-1"[..]))])
        };
        assert_eq!(
            headers_or_none(readable, 0, 8).idempotency_key.as_deref(),
            Some("k-1")
        );
    }
}
