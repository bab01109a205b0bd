//! The unit of commit: a batch of effects plus the source positions just past them.

use std::collections::BTreeMap;

use operators::record::{DeadLetter, EventRow, PartitionProgress};
use operators::stream_state::StreamState;

/// Everything one transaction makes durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitBatch {
    /// Events for the `events` table.
    pub events: Vec<EventRow>,
    /// Poison records for the `dead_letter` table.
    pub dead_letters: Vec<DeadLetter>,
    /// Where each partition resumes once this batch is durable.
    pub progress: Vec<PartitionProgress>,
    /// Repeats the de-duplication dropped (counted, not written).
    pub duplicates_dropped: u64,
    /// New states of the streams the batch changed.
    pub stream_states: Vec<StreamState>,
    /// Gateway outcomes for the SLO windows, each publication counted once.
    pub gateway_outcomes: Vec<operators::slo_window::PublishedSample>,
}

impl CommitBatch {
    /// Whether the batch has nothing to write at all.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.dead_letters.is_empty()
            && self.progress.is_empty()
            && self.duplicates_dropped == 0
            && self.stream_states.is_empty()
            && self.gateway_outcomes.is_empty()
    }

    /// Number of records (events and dead letters) in the batch.
    pub fn record_count(&self) -> usize {
        self.events.len() + self.dead_letters.len()
    }

    /// Appends a later batch; each partition keeps its furthest position.
    pub fn absorb(&mut self, later: CommitBatch) {
        self.events.extend(later.events);
        self.stream_states.extend(later.stream_states);
        self.gateway_outcomes.extend(later.gateway_outcomes);
        self.duplicates_dropped += later.duplicates_dropped;
        self.dead_letters.extend(later.dead_letters);
        self.progress.extend(later.progress);
        self.progress = Self::furthest(std::mem::take(&mut self.progress));
    }

    /// One position per topic partition, the furthest one, in (topic, partition) order.
    pub fn furthest(progress: Vec<PartitionProgress>) -> Vec<PartitionProgress> {
        let mut by_partition = BTreeMap::new();
        for p in progress {
            let next = by_partition
                .entry((p.topic, p.partition))
                .or_insert(p.next_offset);
            *next = (*next).max(p.next_offset);
        }
        by_partition
            .into_iter()
            .map(|((topic, partition), next_offset)| PartitionProgress {
                topic,
                partition,
                next_offset,
            })
            .collect()
    }
}

/// What one committed transaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// The `processed_utc` stamped on the batch's events.
    pub processed_utc: chrono::DateTime<chrono::Utc>,
    /// New rows in `events`.
    pub events_written: u64,
    /// Events whose id was already stored, skipped.
    pub duplicates_skipped: u64,
    /// Rows in `dead_letter` (including events the database rejected).
    pub dead_letters_written: u64,
    /// Events the database rejected, dead-lettered instead.
    pub rejected_by_database: u64,
    /// Events whose id was stored before with another payload, dead-lettered instead.
    pub id_conflicts: u64,
    /// The raw-topic positions (partition, offset) of the batch's events this transaction did
    /// not store: copies skipped, id conflicts and rows the database rejected.
    pub not_stored: std::collections::HashSet<(i32, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, next_offset: i64) -> PartitionProgress {
        PartitionProgress {
            topic: "t".into(),
            partition,
            next_offset,
        }
    }

    #[test]
    fn absorb_keeps_the_furthest_position_per_partition() {
        let mut batch = CommitBatch {
            progress: vec![at(0, 10), at(1, 5)],
            ..Default::default()
        };
        batch.absorb(CommitBatch {
            progress: vec![at(1, 9), at(2, 1), at(0, 3)],
            ..Default::default()
        });
        assert_eq!(batch.progress, vec![at(0, 10), at(1, 9), at(2, 1)]);
    }
}
