//! Gateway outcomes for the ingestion SLO: each answer of the write endpoints is counted in a
//! tumbling window (2xx/4xx good, 5xx bad), and the counts are published to the outcomes topic
//! periodically, so the dataflow owns the SLO numbers. Counts stay in memory until the broker
//! acknowledged them: 5xx answers given while the broker is down still count.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use operators::slo_window::{window_start, GatewayOutcomes};

use crate::EventProducer;

/// Answer counts per window, waiting to be published.
pub struct OutcomeRecorder {
    width: TimeDelta,
    gateway: String,
    windows: Mutex<BTreeMap<DateTime<Utc>, (i64, i64)>>,
}

impl OutcomeRecorder {
    /// A recorder with windows of `width`, publishing as `gateway` (an instance id).
    pub fn new(width: TimeDelta, gateway: String) -> Self {
        Self {
            width,
            gateway,
            windows: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one answer.
    pub fn record(&self, status: u16, at: DateTime<Utc>) {
        let mut windows = self.windows.lock().expect("outcome windows lock");
        let counts = windows.entry(window_start(at, self.width)).or_default();
        counts.0 += i64::from(status < 500);
        counts.1 += 1;
    }

    /// Publishes every pending window's counts; what the broker acknowledged is forgotten.
    pub async fn publish(&self, producer: &EventProducer, topic: &str) {
        let snapshot: Vec<GatewayOutcomes> = self
            .windows
            .lock()
            .expect("outcome windows lock")
            .iter()
            .filter(|(_, (_, total))| *total > 0)
            .map(|(start, (good, total))| GatewayOutcomes {
                window_start_utc: *start,
                good: *good,
                total: *total,
                gateway: self.gateway.clone(),
            })
            .collect();
        for outcomes in snapshot {
            let value = serde_json::to_vec(&outcomes).expect("outcomes serialise");
            match producer
                .publish_with_headers(topic, &self.gateway, &value, &[])
                .await
            {
                Ok(_) => {
                    let mut windows = self.windows.lock().expect("outcome windows lock");
                    if let Some(counts) = windows.get_mut(&outcomes.window_start_utc) {
                        counts.0 -= outcomes.good;
                        counts.1 -= outcomes.total;
                        if counts.1 == 0 {
                            windows.remove(&outcomes.window_start_utc);
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "gateway outcomes not published; kept for the next attempt");
                    return;
                }
            }
        }
    }

    /// Publishes every `every` until the runtime stops.
    pub fn start_publishing(
        self: &Arc<Self>,
        producer: EventProducer,
        topic: String,
        every: Duration,
    ) {
        let recorder = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                recorder.publish(&producer, &topic).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_per_window_and_5xx_is_bad() {
        let recorder = OutcomeRecorder::new(TimeDelta::minutes(1), "g".into());
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        for status in [202, 400, 503] {
            recorder.record(status, at);
        }
        recorder.record(202, at + TimeDelta::minutes(1));
        let windows = recorder.windows.lock().unwrap();
        let counts: Vec<(i64, i64)> = windows.values().copied().collect();
        assert_eq!(counts, vec![(2, 3), (1, 1)]);
    }
}
