//! The dataflow sink's telemetry: one typed event per committed (or retried) batch, whose
//! `emit()` updates the metrics. Label sets are fixed and bounded.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter_vec, register_int_gauge_vec,
    Histogram, HistogramVec, IntCounterVec, IntGaugeVec,
};

use operators::record::DeadLetterReason;

use crate::postgres::{CommitBatch, CommitReport};

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns this crate's metrics on or off (`SENTINEL_METRICS=off`, to measure what they cost):
/// `/metrics` still answers, with the values left where they were.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

static PROCESSOR_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "processor_events_total",
        "Records handled by the dataflow, by result (success, duplicate, dlq, retry)",
        &["result"]
    )
    .expect("registering processor_events_total")
});

static DLQ_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "dlq_events_total",
        "Records dead-lettered, by reason code",
        &["reason"]
    )
    .expect("registering dlq_events_total")
});

static FRESHNESS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "end_to_end_freshness_seconds",
        "processed_utc - received_utc of each stored event, in seconds, by event type",
        &["event_type"],
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 300.0
        ]
    )
    .expect("registering end_to_end_freshness_seconds")
});

static STORED_BY_TYPE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "processor_stored_events_total",
        "Events the dataflow stored in PostgreSQL, by event type",
        &["event_type"]
    )
    .expect("registering processor_stored_events_total")
});

/// The label value for types outside the allow-list.
pub const OTHER_EVENT_TYPE: &str = "other";

/// Which event types get a label value of their own: an explicit allow-list, or the first
/// [`AUTO_EVENT_TYPES`] types seen. Everything else is `other`, so the label stays bounded.
struct EventTypeLabels {
    allowed: std::collections::BTreeSet<String>,
    explicit: bool,
}

/// How many event types get their own label when no allow-list is configured.
pub const AUTO_EVENT_TYPES: usize = 20;

static EVENT_TYPE_LABELS: LazyLock<std::sync::Mutex<EventTypeLabels>> = LazyLock::new(|| {
    std::sync::Mutex::new(EventTypeLabels {
        allowed: Default::default(),
        explicit: false,
    })
});

/// Sets the event types with a label of their own (`SENTINEL_METRICS_EVENT_TYPES`); an empty
/// list keeps the default: the first 20 types seen.
pub fn configure_event_types(types: impl IntoIterator<Item = String>) {
    let allowed: std::collections::BTreeSet<String> =
        types.into_iter().filter(|t| !t.is_empty()).collect();
    let mut labels = EVENT_TYPE_LABELS.lock().unwrap_or_else(|p| p.into_inner());
    labels.explicit = !allowed.is_empty();
    labels.allowed = allowed;
}

fn event_type_label<'a>(labels: &mut EventTypeLabels, event_type: &'a str) -> &'a str {
    if labels.allowed.contains(event_type) {
        return event_type;
    }
    if !labels.explicit && labels.allowed.len() < AUTO_EVENT_TYPES {
        labels.allowed.insert(event_type.to_owned());
        return event_type;
    }
    OTHER_EVENT_TYPE
}

static BATCH_RECORDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "sink_batch_records",
        "Records (events and dead letters) per committed transaction",
        vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 20000.0]
    )
    .expect("registering sink_batch_records")
});

static COMMIT_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "sink_commit_duration_ms",
        "Time to commit one batch transaction, in milliseconds",
        vec![0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]
    )
    .expect("registering sink_commit_duration_ms")
});

static LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "processor_lag_seconds",
        "Seconds between now and the receive time of the last committed record, per partition",
        &["partition"]
    )
    .expect("registering processor_lag_seconds")
});

static DEDUP_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "dedup_state_entries",
        "Events the de-duplication holds in memory (the retention, and up to a quarter of it more), per worker",
        &["worker"]
    )
    .expect("registering dedup_state_entries")
});

/// The size of one worker's de-duplication memory after an input batch.
pub struct DedupStateSize<'a> {
    /// Worker index (bounded by the number of workers).
    pub worker: &'a str,
    /// Remembered identities.
    pub entries: usize,
}

impl DedupStateSize<'_> {
    /// Records it.
    pub fn emit(self) {
        if !enabled() {
            return;
        }
        DEDUP_STATE
            .with_label_values(&[self.worker])
            .set(self.entries as i64);
    }
}

static LOST_TO_RETENTION: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "source_records_lost_to_retention_total",
        "Records the broker's retention deleted before the dataflow processed them, per topic",
        &["topic"]
    )
    .expect("registering source_records_lost_to_retention_total")
});

/// A worker found, at start, that retention deleted records its stored offset had not reached.
pub struct RecordsLostToRetention<'a> {
    /// The topic (bounded: the raw and the outcomes topic).
    pub topic: &'a str,
    /// How many records.
    pub records: i64,
}

impl RecordsLostToRetention<'_> {
    /// Records it (even with metrics off: a loss must not go unseen).
    pub fn emit(self) {
        LOST_TO_RETENTION
            .with_label_values(&[self.topic])
            .inc_by(u64::try_from(self.records).unwrap_or(0));
    }
}

static PARTITIONS_UNREAD: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "source_partitions_unread",
        "Partitions the broker has that no worker reads: added to the topic after the workers \
         started, they are read only once every process restarts",
        &["topic"]
    )
    .expect("registering source_partitions_unread")
});

/// How many of a topic's partitions no worker reads, as of the last look at the broker's
/// metadata.
pub struct PartitionsUnread<'a> {
    /// The topic (bounded: the raw and the outcomes topic).
    pub topic: &'a str,
    /// How many partitions.
    pub partitions: usize,
}

impl PartitionsUnread<'_> {
    /// Records it (even with metrics off: events waiting unread must not go unseen).
    pub fn emit(self) {
        PARTITIONS_UNREAD
            .with_label_values(&[self.topic])
            .set(i64::try_from(self.partitions).unwrap_or(i64::MAX));
    }
}

/// Registers every sink metric, so that `/metrics` lists them before they first change.
pub fn register() {
    LazyLock::force(&PROCESSOR_EVENTS);
    LazyLock::force(&DLQ_EVENTS);
    LazyLock::force(&FRESHNESS);
    LazyLock::force(&BATCH_RECORDS);
    LazyLock::force(&COMMIT_DURATION);
    LazyLock::force(&LAG);
    LazyLock::force(&DEDUP_STATE);
    LazyLock::force(&STORED_BY_TYPE);
    LazyLock::force(&LOST_TO_RETENTION);
    LazyLock::force(&PARTITIONS_UNREAD);
    FRESHNESS.with_label_values(&[OTHER_EVENT_TYPE]);
    STORED_BY_TYPE.with_label_values(&[OTHER_EVENT_TYPE]);
    // Every label value that can occur, so that rates and sums exist (as 0) before it does.
    for result in ["success", "duplicate", "dlq", "retry"] {
        PROCESSOR_EVENTS.with_label_values(&[result]);
    }
    for reason in DeadLetterReason::ALL {
        DLQ_EVENTS.with_label_values(&[reason.code()]);
    }
}

/// A batch became durable.
pub struct BatchCommitted<'a> {
    /// The batch.
    pub batch: &'a CommitBatch,
    /// What the transaction did.
    pub report: &'a CommitReport,
    /// The time stamped as `processed_utc`.
    pub processed_utc: DateTime<Utc>,
    /// Time the commit took.
    pub duration: Duration,
}

impl BatchCommitted<'_> {
    /// Records the event.
    pub fn emit(self) {
        if !enabled() {
            return;
        }
        let report = self.report;
        PROCESSOR_EVENTS
            .with_label_values(&["success"])
            .inc_by(report.events_written);
        PROCESSOR_EVENTS
            .with_label_values(&["duplicate"])
            .inc_by(report.duplicates_skipped + self.batch.duplicates_dropped);
        PROCESSOR_EVENTS
            .with_label_values(&["dlq"])
            .inc_by(report.dead_letters_written);
        for dead in &self.batch.dead_letters {
            DLQ_EVENTS.with_label_values(&[dead.reason.code()]).inc();
        }
        if report.id_conflicts > 0 {
            DLQ_EVENTS
                .with_label_values(&["duplicate_event_id_conflict"])
                .inc_by(report.id_conflicts);
        }
        if report.rejected_by_database > 0 {
            DLQ_EVENTS
                .with_label_values(&["database_rejected"])
                .inc_by(report.rejected_by_database);
        }
        let mut last_received = std::collections::BTreeMap::new();
        for event in &self.batch.events {
            last_received
                .entry(event.partition)
                .and_modify(|at: &mut DateTime<Utc>| *at = (*at).max(event.received_utc))
                .or_insert(event.received_utc);
        }
        let by_type = stored_freshness_by_type(self.batch, self.report, self.processed_utc);
        if !by_type.is_empty() {
            let mut labels = EVENT_TYPE_LABELS.lock().unwrap_or_else(|p| p.into_inner());
            for (event_type, samples) in by_type {
                let label = event_type_label(&mut labels, event_type);
                let histogram = FRESHNESS.with_label_values(&[label]);
                for sample in &samples {
                    histogram.observe(*sample);
                }
                STORED_BY_TYPE
                    .with_label_values(&[label])
                    .inc_by(samples.len() as u64);
            }
        }
        for (partition, received) in last_received {
            LAG.with_label_values(&[&partition.to_string()])
                .set((self.processed_utc - received).num_seconds().max(0));
        }
        BATCH_RECORDS.observe(self.batch.record_count() as f64);
        COMMIT_DURATION.observe(self.duration.as_secs_f64() * 1000.0);
    }
}

/// `processed_utc − received_utc`, in seconds, of each event of `batch` its transaction stored,
/// by event type: a copy the writer skipped, an id conflict or a row PostgreSQL refused is not
/// stored, so it is neither fresh nor counted as stored.
fn stored_freshness_by_type<'b>(
    batch: &'b CommitBatch,
    report: &CommitReport,
    processed_utc: DateTime<Utc>,
) -> std::collections::BTreeMap<&'b str, Vec<f64>> {
    let mut by_type: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for event in &batch.events {
        if report.not_stored.contains(&(event.partition, event.offset)) {
            continue;
        }
        let freshness = (processed_utc - event.received_utc).num_microseconds();
        by_type
            .entry(event.event_type.as_str())
            .or_default()
            .push(freshness.unwrap_or(0).max(0) as f64 / 1e6);
    }
    by_type
}

/// A batch commit failed transiently and will be retried.
pub struct BatchRetried {
    /// Records in the batch.
    pub records: usize,
}

impl BatchRetried {
    /// Records the event.
    pub fn emit(self) {
        if !enabled() {
            return;
        }
        PROCESSOR_EVENTS
            .with_label_values(&["retry"])
            .inc_by(self.records as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use operators::record::EventRow;

    #[test]
    fn freshness_and_stored_counts_leave_out_what_was_not_stored() {
        let processed_utc = DateTime::from_timestamp(1_800_000_010, 0).unwrap();
        let event = |offset: i64, event_type: &str, seconds_before: i64| EventRow {
            event_id: uuid::Uuid::from_u128(offset as u128),
            tenant_id: "acme".into(),
            source: "s".into(),
            event_type: event_type.into(),
            stream_key: "k".into(),
            timestamp_utc: processed_utc,
            schema_version: 1,
            payload_json: "{}".into(),
            received_utc: processed_utc - chrono::TimeDelta::seconds(seconds_before),
            trace_id: None,
            trace_parent: None,
            payload_hash: String::new(),
            idempotency_key: None,
            partition: 0,
            offset,
            key: None,
            original: Vec::new(),
        };
        let batch = CommitBatch {
            events: vec![event(0, "a", 1), event(1, "a", 2), event(2, "b", 3)],
            ..CommitBatch::default()
        };
        let report = CommitReport {
            not_stored: [(0, 1)].into(),
            ..CommitReport::default()
        };
        let by_type = stored_freshness_by_type(&batch, &report, processed_utc);
        assert_eq!(
            by_type,
            [("a", vec![1.0]), ("b", vec![3.0])].into(),
            "the copy at offset 1 is neither a freshness sample nor a stored event"
        );
    }

    #[test]
    fn event_type_labels_stay_bounded() {
        let mut auto = EventTypeLabels {
            allowed: Default::default(),
            explicit: false,
        };
        let names: Vec<String> = (0..AUTO_EVENT_TYPES + 5).map(|i| format!("t{i}")).collect();
        let labels: Vec<&str> = names
            .iter()
            .map(|n| event_type_label(&mut auto, n))
            .collect();
        assert_eq!(labels[0], "t0");
        assert_eq!(
            labels[AUTO_EVENT_TYPES - 1],
            format!("t{}", AUTO_EVENT_TYPES - 1)
        );
        assert!(labels[AUTO_EVENT_TYPES..]
            .iter()
            .all(|l| *l == OTHER_EVENT_TYPE));
        assert_eq!(
            event_type_label(&mut auto, "t0"),
            "t0",
            "known types keep their label"
        );
        let mut explicit = EventTypeLabels {
            allowed: ["order.created".to_owned()].into(),
            explicit: true,
        };
        assert_eq!(
            event_type_label(&mut explicit, "order.created"),
            "order.created"
        );
        assert_eq!(
            event_type_label(&mut explicit, "order.paid"),
            OTHER_EVENT_TYPE
        );
    }
}
