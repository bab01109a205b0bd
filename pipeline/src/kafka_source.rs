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
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ingress::KafkaSettings;
use operators::headers::RecordHeaders;
use operators::record::{PartitionProgress, SourceRecord};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};

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
        .set("fetch.wait.max.ms", "100");
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

/// Where a stored next offset stands against what the partition still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredPosition {
    /// Within the partition's records (or at its end): reading resumes there.
    Within,
    /// Below the oldest record the broker keeps: retention deleted these many records before
    /// they were processed, and reading starts at the oldest one left.
    Deleted(i64),
    /// Past the partition's end (the topic was deleted and created again): reading starts at
    /// its beginning, and de-duplication drops what was stored before.
    PastTheEnd,
}

/// Places `next` between a partition's `low` and `high` watermarks.
pub fn stored_position(next: i64, low: i64, high: i64) -> StoredPosition {
    if next < low {
        StoredPosition::Deleted(low - next)
    } else if next > high {
        StoredPosition::PastTheEnd
    } else {
        StoredPosition::Within
    }
}

/// The consumer's context: logs as librdkafka's default context does, and counts the records
/// an offset reset skips when the broker's retention deleted them while the worker was behind.
/// librdkafka delivers its log lines on the consumer's queue, so [`SourceContext::log`] runs
/// inside `poll`, on the worker, before the messages fetched from the new position.
#[derive(Default)]
pub struct SourceContext {
    /// Partitions whose loss the start-up check reported: their first reset is that loss.
    reported_at_start: Mutex<HashSet<(String, i32)>>,
    /// Resets whose target librdkafka did not know, by partition: the offset that was out of
    /// range, until the first message read after it tells how far reading jumped.
    unresolved: Mutex<HashMap<(String, i32), i64>>,
    /// Whether `unresolved` holds anything (checked for every message, without the lock).
    any_unresolved: AtomicBool,
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "OFFSET" {
            if let Some(reset) = offset_reset(message) {
                self.count_reset(&reset);
            }
        }
        DefaultClientContext.log(level, fac, message);
    }
}

impl ConsumerContext for SourceContext {}

impl SourceContext {
    fn count_reset(&self, reset: &OffsetReset<'_>) {
        if reset.to.is_some_and(|to| to <= reset.from) {
            return; // Past the end, not behind the start: nothing skipped.
        }
        let key = (reset.topic.to_owned(), reset.partition);
        let first_after_start = self
            .reported_at_start
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        if first_after_start {
            return;
        }
        match reset.to {
            Some(to) => report_lost(reset.topic, reset.partition, reset.from, to),
            None => {
                self.unresolved
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key, reset.from);
                self.any_unresolved.store(true, Ordering::Release);
            }
        }
    }

    /// Reading of `topic`/`partition` reached `offset`: counts what an unresolved reset of the
    /// partition skipped to get there.
    fn read_at(&self, topic: &str, partition: i32, offset: i64) {
        if !self.any_unresolved.load(Ordering::Acquire) {
            return;
        }
        let mut unresolved = self
            .unresolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(from) = unresolved.remove(&(topic.to_owned(), partition)) {
            if offset > from {
                report_lost(topic, partition, from, offset);
            }
        }
        self.any_unresolved
            .store(!unresolved.is_empty(), Ordering::Release);
    }
}

/// Counts and logs `from..to` of a partition as lost to retention.
fn report_lost(topic: &str, partition: i32, from: i64, to: i64) {
    let lost = to - from;
    sinks::telemetry::RecordsLostToRetention {
        topic,
        records: lost,
    }
    .emit();
    tracing::error!(
        topic,
        partition,
        next_offset = from,
        oldest_kept_offset = to,
        lost,
        "records were deleted by the broker's retention before they were processed: they are \
         lost to Sentinel; reading resumed at the oldest record kept"
    );
}

/// librdkafka's account of an offset reset after "Offset out of range".
#[derive(Debug, PartialEq, Eq)]
pub struct OffsetReset<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The offset that was out of range.
    pub from: i64,
    /// Where reading resumes, when librdkafka knew it (the log start of its last fetch).
    pub to: Option<i64>,
}

/// Reads librdkafka's `OFFSET` log line of a reset caused by an out-of-range offset (the
/// line of `rd_kafka_offset_reset`):
/// `[thrd:<thread>]: <topic> [<partition>]: offset reset (at offset <from> (leader epoch <e>), broker <b>) to
/// [cached BEGINNING offset ]offset <to|BEGINNING> (leader epoch <e>): <reason>: <error>`.
pub fn offset_reset(message: &str) -> Option<OffsetReset<'_>> {
    if !message.ends_with("Offset out of range") {
        return None;
    }
    // librdkafka names its thread first (`log.thread.name`, on by default).
    let message = match message.strip_prefix("[thrd:") {
        Some(rest) => rest.split_once("]: ")?.1,
        None => message,
    };
    let (topic, rest) = message.split_once(" [")?;
    let (partition, rest) = rest.split_once("]: offset reset (at offset ")?;
    let (from, rest) = rest.split_once(' ')?;
    let (_, rest) = rest.split_once(") to ")?;
    let rest = rest
        .strip_prefix("cached BEGINNING offset ")
        .unwrap_or(rest);
    let (to, _) = rest.strip_prefix("offset ")?.split_once(' ')?;
    Some(OffsetReset {
        topic,
        partition: partition.parse().ok()?,
        from: from.parse().ok()?,
        to: to.parse().ok(),
    })
}

/// Says loudly, before reading, when a partition no longer holds the records its stored
/// offset points at: `auto.offset.reset` would otherwise move on silently. (While the worker
/// runs, [`SourceContext`] counts what a reset skips.)
fn report_stored_position(
    consumer: &BaseConsumer<SourceContext>,
    topic: &str,
    partition: i32,
    next: i64,
    timeout: Duration,
) {
    let (low, high) = match consumer.fetch_watermarks(topic, partition, timeout) {
        Ok(marks) => marks,
        Err(err) => {
            tracing::warn!(
                topic,
                partition,
                error = %err,
                "could not read the partition's watermarks to check the stored offset"
            );
            return;
        }
    };
    match stored_position(next, low, high) {
        StoredPosition::Within => {}
        StoredPosition::Deleted(lost) => {
            consumer
                .context()
                .reported_at_start
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert((topic.to_owned(), partition));
            sinks::telemetry::RecordsLostToRetention {
                topic,
                records: lost,
            }
            .emit();
            tracing::error!(
                topic,
                partition,
                stored_next_offset = next,
                oldest_kept_offset = low,
                lost,
                "records were deleted by the broker's retention before they were processed: \
                 they are lost to Sentinel; reading resumes at the oldest record kept"
            );
        }
        StoredPosition::PastTheEnd => tracing::warn!(
            topic,
            partition,
            stored_next_offset = next,
            end_offset = high,
            "the stored offset is past the partition's end (was the topic created again?): \
             reading starts at its beginning"
        ),
    }
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
    fn librdkafka_s_out_of_range_reset_is_read_from_its_log_line() {
        let cached = "events.raw.v1 [1]: offset reset (at offset 5 (leader epoch -1), broker 1) \
             to cached BEGINNING offset offset 12 (leader epoch -1): fetch failed due to \
             requested offset not available on the broker: Broker: Offset out of range";
        assert_eq!(
            offset_reset(cached),
            Some(OffsetReset {
                topic: "events.raw.v1",
                partition: 1,
                from: 5,
                to: Some(12)
            })
        );
        // As librdkafka logs it against Apache Kafka: thread first, target unknown.
        let queried = "[thrd:main]: events.raw.v1 [0]: offset reset (at offset 5 (leader epoch \
             3), broker 2) to offset BEGINNING (leader epoch -1): fetch failed due to requested \
             offset not available on the broker: Broker: Offset out of range";
        assert_eq!(
            offset_reset(queried),
            Some(OffsetReset {
                topic: "events.raw.v1",
                partition: 0,
                from: 5,
                to: None
            })
        );
        let other = "events.raw.v1 [0]: offset reset (at offset INVALID (leader epoch -1), \
             broker -1) to offset BEGINNING (leader epoch -1): no previously committed offset \
             available: Local: No offset stored";
        assert_eq!(offset_reset(other), None);
    }

    /// What `source_records_lost_to_retention_total` holds for `topic`.
    fn lost_to_retention(topic: &str) -> f64 {
        prometheus::gather()
            .iter()
            .filter(|family| family.name() == "source_records_lost_to_retention_total")
            .flat_map(|family| family.get_metric())
            .filter(|metric| metric.get_label().iter().any(|l| l.value() == topic))
            .map(|metric| metric.get_counter().get_value())
            .sum()
    }

    #[test]
    fn a_reset_while_running_counts_what_it_skipped_once() {
        let context = SourceContext::default();
        let reset = |partition, from, to| OffsetReset {
            topic: "unit.lost.v1",
            partition,
            from,
            to,
        };
        context.count_reset(&reset(0, 5, Some(12)));
        assert_eq!(lost_to_retention("unit.lost.v1"), 7.0);
        // Past the end: nothing skipped. Unknown target: not counted (logged).
        context.count_reset(&reset(0, 20, Some(12)));
        context.count_reset(&reset(0, 20, None));
        assert_eq!(lost_to_retention("unit.lost.v1"), 7.0);
        // A partition whose loss the start-up check counted: its first reset is that loss.
        context
            .reported_at_start
            .lock()
            .unwrap()
            .insert(("unit.lost.v1".to_owned(), 1));
        context.count_reset(&reset(1, 0, Some(4)));
        assert_eq!(lost_to_retention("unit.lost.v1"), 7.0);
        context.count_reset(&reset(1, 4, Some(6)));
        assert_eq!(lost_to_retention("unit.lost.v1"), 9.0);
        // Target unknown: the first record read after the reset tells.
        context.count_reset(&reset(2, 10, None));
        context.read_at("unit.lost.v1", 1, 50);
        assert_eq!(lost_to_retention("unit.lost.v1"), 9.0, "another partition");
        context.read_at("unit.lost.v1", 2, 25);
        assert_eq!(lost_to_retention("unit.lost.v1"), 24.0);
        context.read_at("unit.lost.v1", 2, 26);
        assert_eq!(lost_to_retention("unit.lost.v1"), 24.0, "counted once");
    }

    #[test]
    fn a_stored_offset_is_placed_against_the_watermarks() {
        assert_eq!(stored_position(5, 0, 10), StoredPosition::Within);
        assert_eq!(stored_position(10, 0, 10), StoredPosition::Within);
        assert_eq!(stored_position(3, 7, 10), StoredPosition::Deleted(4));
        assert_eq!(stored_position(12, 0, 10), StoredPosition::PastTheEnd);
    }

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
