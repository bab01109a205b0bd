//! Reports the records the broker's retention deleted before the dataflow read them.
//!
//! A worker starting compares its stored offsets with the partitions' watermarks; while it
//! runs, its consumer's context reads the Kafka client's offset resets. Each loss is logged and
//! counted in `source_records_lost_to_retention_total`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

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
/// inside `poll`, on the worker: before the messages fetched from the new position, and
/// possibly before older ones fetched earlier (log lines go ahead of queued messages).
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
                    .entry(key)
                    .or_insert(reset.from); // a second reset before any record: the first counts
                self.any_unresolved.store(true, Ordering::Release);
            }
        }
    }

    /// Reading of `topic`/`partition` reached `offset`: counts what an unresolved reset of the
    /// partition skipped to get there.
    pub fn read_at(&self, topic: &str, partition: i32, offset: i64) {
        if !self.any_unresolved.load(Ordering::Acquire) {
            return;
        }
        let mut unresolved = self
            .unresolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (topic.to_owned(), partition);
        // A record below the reset's offset was fetched before it (the log line overtakes
        // what is queued): the first one at or past it tells where reading resumed.
        if let Some(&from) = unresolved.get(&key).filter(|&&from| offset >= from) {
            unresolved.remove(&key);
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
         lost to Sentinel; reading resumes at the oldest record kept"
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
/// `[thrd:<thread>]: <topic> [<partition>]: offset reset (at offset <from> (leader epoch <e>),
/// broker <b>) to [cached BEGINNING offset ]offset <to|BEGINNING> (leader epoch <e>): <reason>:
/// <error>`.
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
pub fn report_stored_position(
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
        StoredPosition::Deleted(_) => {
            consumer
                .context()
                .reported_at_start
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert((topic.to_owned(), partition));
            report_lost(topic, partition, next, low);
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
        // Target unknown: the first record read at or past the reset's offset tells.
        context.count_reset(&reset(2, 10, None));
        context.count_reset(&reset(2, 15, None));
        context.read_at("unit.lost.v1", 1, 50);
        assert_eq!(lost_to_retention("unit.lost.v1"), 9.0, "another partition");
        context.read_at("unit.lost.v1", 2, 8);
        context.read_at("unit.lost.v1", 2, 9);
        assert_eq!(
            lost_to_retention("unit.lost.v1"),
            9.0,
            "records fetched before the reset, read after its log line"
        );
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
}
