//! Tumbling SLO windows and their samples: gateway outcomes (2xx/4xx good, 5xx bad), each
//! publication of a gateway counted once however often the gateway had to publish it, and the
//! freshness of each stored event (processed − received within a threshold), sampled by the
//! writer, which alone knows which events it stored ([`FreshnessObjective`]). The writer adds
//! both to their windows in the transaction that commits their records, so a late sample simply
//! adds to its (older) window: a window is never wrong for having closed.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Counts of one window (or a delta to them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SloCounts {
    /// Gateway answers that were not 5xx.
    pub ingestion_good: i64,
    /// All gateway answers.
    pub ingestion_total: i64,
    /// Events processed within the freshness threshold.
    pub freshness_good: i64,
    /// All processed events.
    pub freshness_total: i64,
}

impl SloCounts {
    /// Adds `other`, saturating: a count past `i64::MAX` stays there rather than wrapping
    /// negative (only a foreign outcomes record could come near it).
    pub fn add(&mut self, other: &SloCounts) {
        self.ingestion_good = self.ingestion_good.saturating_add(other.ingestion_good);
        self.ingestion_total = self.ingestion_total.saturating_add(other.ingestion_total);
        self.freshness_good = self.freshness_good.saturating_add(other.freshness_good);
        self.freshness_total = self.freshness_total.saturating_add(other.freshness_total);
    }
}

/// The most answers one outcomes record may count: a million answers a second for eleven
/// days, far above what one gateway publishes per window, and far enough below `i64::MAX` that
/// sums of such records cannot overflow a window's `bigint` columns.
pub const MAX_OUTCOMES_PER_RECORD: i64 = 1_000_000_000_000;

/// Why an outcomes record read from the topic is not counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutcomesError {
    /// A count is negative or more good answers than answers are claimed.
    #[error("the counts are impossible: good {good}, total {total} (need 0 <= good <= total)")]
    ImpossibleCounts {
        /// The good answers claimed.
        good: i64,
        /// The answers claimed.
        total: i64,
    },
    /// More answers than one record may count.
    #[error("total {total} is over the limit of {MAX_OUTCOMES_PER_RECORD} answers per record")]
    TooMany {
        /// The answers claimed.
        total: i64,
    },
    /// A window that no gateway could have answered in.
    #[error("window start {0} is outside the years 1970 to 9999")]
    WindowOutOfRange(DateTime<Utc>),
}

/// A delta to one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SloSample {
    /// Start of the window.
    pub window_start: DateTime<Utc>,
    /// What to add to it.
    pub counts: SloCounts,
}

/// What a gateway publishes to the outcomes topic: its answers in one window since its last
/// publication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayOutcomes {
    /// Start of the window the answers fall in.
    pub window_start_utc: DateTime<Utc>,
    /// Answers that were not 5xx.
    pub good: i64,
    /// All answers.
    pub total: i64,
    /// The publishing gateway instance.
    pub gateway: String,
    /// This publication's id, the same in every copy the gateway sends: one whose
    /// acknowledgement was lost is sent again, and must be counted once. Absent in records of
    /// gateways older than the id, which are counted as they come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication_id: Option<Uuid>,
}

/// A gateway publication's sample, with the publication's id (when it has one) by which the
/// writer counts it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedSample {
    /// The publication's id; `None` is counted every time.
    pub publication_id: Option<Uuid>,
    /// What it adds to its window.
    pub sample: SloSample,
}

impl GatewayOutcomes {
    /// The sample of this publication, once the counts and the window are believable: a record
    /// on the topic may come from another producer than our gateway.
    pub fn published_sample(&self) -> Result<PublishedSample, OutcomesError> {
        Ok(PublishedSample {
            publication_id: self.publication_id,
            sample: self.sample()?,
        })
    }

    /// The sample these outcomes add to their window, once the counts and the window are
    /// believable.
    pub fn sample(&self) -> Result<SloSample, OutcomesError> {
        if self.good < 0 || self.total < 0 || self.good > self.total {
            return Err(OutcomesError::ImpossibleCounts {
                good: self.good,
                total: self.total,
            });
        }
        if self.total > MAX_OUTCOMES_PER_RECORD {
            return Err(OutcomesError::TooMany { total: self.total });
        }
        if !(1970..=9999).contains(&chrono::Datelike::year(&self.window_start_utc)) {
            return Err(OutcomesError::WindowOutOfRange(self.window_start_utc));
        }
        Ok(SloSample {
            window_start: self.window_start_utc,
            counts: SloCounts {
                ingestion_good: self.good,
                ingestion_total: self.total,
                ..SloCounts::default()
            },
        })
    }
}

/// The start of the window of width `width` that holds `at`.
pub fn window_start(at: DateTime<Utc>, width: TimeDelta) -> DateTime<Utc> {
    let width_ms = width.num_milliseconds().max(1);
    let ms = at.timestamp_millis();
    DateTime::from_timestamp_millis(ms - ms.rem_euclid(width_ms)).unwrap_or(at)
}

/// How the freshness objective samples a stored event: processed − received within
/// `threshold` is good, counted in the window of its receive time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshnessObjective {
    /// Width of the tumbling SLO windows.
    pub window: TimeDelta,
    /// Longest processed − received that still counts as fresh.
    pub threshold: TimeDelta,
}

impl FreshnessObjective {
    /// The sample of one event received at `received` and stored at `processed`, in the
    /// window of its receive time.
    pub fn sample(&self, received: DateTime<Utc>, processed: DateTime<Utc>) -> SloSample {
        SloSample {
            window_start: window_start(received, self.window),
            counts: SloCounts {
                freshness_good: i64::from(processed - received <= self.threshold),
                freshness_total: 1,
                ..SloCounts::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn windows_are_tumbling_and_aligned() {
        let minute = TimeDelta::minutes(1);
        assert_eq!(
            window_start(at(0) + TimeDelta::seconds(59), minute),
            window_start(at(0), minute)
        );
        assert_ne!(
            window_start(at(0) + TimeDelta::seconds(60), minute),
            window_start(at(0), minute)
        );
        assert_eq!(window_start(at(0), minute).timestamp() % 60, 0);
    }

    #[test]
    fn freshness_is_good_within_the_threshold() {
        let objective = FreshnessObjective {
            window: TimeDelta::minutes(1),
            threshold: TimeDelta::seconds(10),
        };
        assert_eq!(objective.sample(at(0), at(10)).counts.freshness_good, 1);
        assert_eq!(objective.sample(at(0), at(11)).counts.freshness_good, 0);
    }

    #[test]
    fn outcomes_that_no_gateway_could_publish_are_refused() {
        let outcomes = |good, total, start| GatewayOutcomes {
            window_start_utc: start,
            good,
            total,
            gateway: "g".into(),
            publication_id: None,
        };
        assert_eq!(
            outcomes(3, 4, at(0))
                .sample()
                .unwrap()
                .counts
                .ingestion_total,
            4
        );
        assert_eq!(
            outcomes(5, 4, at(0)).sample(),
            Err(OutcomesError::ImpossibleCounts { good: 5, total: 4 })
        );
        assert!(outcomes(-1, 4, at(0)).sample().is_err());
        assert_eq!(
            outcomes(0, i64::MAX, at(0)).sample(),
            Err(OutcomesError::TooMany { total: i64::MAX })
        );
        let ancient = DateTime::from_timestamp(-100_000_000_000, 0).unwrap();
        assert_eq!(
            outcomes(1, 1, ancient).sample(),
            Err(OutcomesError::WindowOutOfRange(ancient))
        );
    }

    #[test]
    fn counts_saturate_rather_than_wrap() {
        let mut counts = SloCounts {
            ingestion_total: i64::MAX - 1,
            ..SloCounts::default()
        };
        counts.add(&SloCounts {
            ingestion_total: 5,
            freshness_total: 1,
            ..SloCounts::default()
        });
        assert_eq!(counts.ingestion_total, i64::MAX);
        assert_eq!(counts.freshness_total, 1);
    }
}
