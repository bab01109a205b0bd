//! Gateway outcomes for the ingestion SLO: each answer of the write endpoints is counted in a
//! tumbling window (2xx/4xx good, 5xx bad), and the counts are published to the outcomes topic
//! periodically, so the dataflow owns the SLO numbers. Counts stay in memory until the broker
//! acknowledged them: 5xx answers given while the broker is down still count. A publication
//! keeps its id until acknowledged, so one the broker wrote but whose acknowledgement was lost
//! is sent again as the same publication, which the writer counts once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use operators::slo_window::{window_start, GatewayOutcomes};
use uuid::Uuid;

use crate::EventProducer;

/// Answer counts per window, and the publications made of them, waiting to be published.
pub struct OutcomeRecorder {
    width: TimeDelta,
    gateway: String,
    state: Mutex<Recorded>,
    /// Held by the one call publishing, so that the periodic publisher and the final one at
    /// shutdown take turns.
    publishing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Recorded {
    /// Answers not yet in a publication, per window: (good, total).
    windows: BTreeMap<DateTime<Utc>, (i64, i64)>,
    /// The publication sent last and not acknowledged: it may have been written, so it is sent
    /// again, unchanged, before any other.
    in_doubt: Option<GatewayOutcomes>,
}

impl OutcomeRecorder {
    /// A recorder with windows of `width`, publishing as `gateway` (an instance id).
    pub fn new(width: TimeDelta, gateway: String) -> Self {
        Self {
            width,
            gateway,
            state: Mutex::new(Recorded::default()),
            publishing: tokio::sync::Mutex::new(()),
        }
    }

    /// Counts one answer.
    pub fn record(&self, status: u16, at: DateTime<Utc>) {
        let mut state = self.state.lock().expect("outcome recorder lock");
        let counts = state
            .windows
            .entry(window_start(at, self.width))
            .or_default();
        counts.0 += i64::from(status < 500);
        counts.1 += 1;
    }

    /// The publication to send next: the one in doubt, else the oldest window's answers as a
    /// new publication (with a new id), which is in doubt from now until acknowledged.
    fn next_publication(&self) -> Option<GatewayOutcomes> {
        let mut state = self.state.lock().expect("outcome recorder lock");
        if state.in_doubt.is_none() {
            let (start, (good, total)) = state.windows.pop_first()?;
            state.in_doubt = Some(GatewayOutcomes {
                window_start_utc: start,
                good,
                total,
                gateway: self.gateway.clone(),
                publication_id: Some(Uuid::new_v4()),
            });
        }
        state.in_doubt.clone()
    }

    /// The broker acknowledged `publication`: it is no longer in doubt.
    fn acknowledged(&self, publication: &GatewayOutcomes) {
        let mut state = self.state.lock().expect("outcome recorder lock");
        if state.in_doubt.as_ref() == Some(publication) {
            state.in_doubt = None;
        }
    }

    /// Publishes what was counted until now, one publication at a time, until the broker fails
    /// to acknowledge one; that one is sent again, unchanged, next time, and the answers counted
    /// meanwhile wait behind it. Answers counted while it publishes wait for the next call.
    pub async fn publish(&self, producer: &EventProducer, topic: &str) {
        let _turn = self.publishing.lock().await;
        let due = {
            let state = self.state.lock().expect("outcome recorder lock");
            state.windows.len() + usize::from(state.in_doubt.is_some())
        };
        for _ in 0..due {
            let Some(publication) = self.next_publication() else {
                return;
            };
            let value = serde_json::to_vec(&publication).expect("outcomes serialise");
            match producer
                .publish_with_headers(topic, &self.gateway, &value, &[])
                .await
            {
                Ok(_) => self.acknowledged(&publication),
                Err(err) => {
                    tracing::warn!(error = %err, "gateway outcomes not published; sent again as the same publication next time");
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

    /// Every publication the recorder makes, each acknowledged at once.
    fn drain(recorder: &OutcomeRecorder) -> Vec<GatewayOutcomes> {
        std::iter::from_fn(|| {
            let publication = recorder.next_publication()?;
            recorder.acknowledged(&publication);
            Some(publication)
        })
        .collect()
    }

    #[test]
    fn answers_are_counted_per_window_and_5xx_is_bad() {
        let recorder = OutcomeRecorder::new(TimeDelta::minutes(1), "g".into());
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        for status in [202, 400, 503] {
            recorder.record(status, at);
        }
        recorder.record(202, at + TimeDelta::minutes(1));
        let counts: Vec<(i64, i64)> = drain(&recorder).iter().map(|p| (p.good, p.total)).collect();
        assert_eq!(counts, vec![(2, 3), (1, 1)]);
        assert!(drain(&recorder).is_empty(), "each answer is published once");
    }

    #[test]
    fn an_unacknowledged_publication_is_sent_again_unchanged_and_later_answers_apart() {
        let recorder = OutcomeRecorder::new(TimeDelta::minutes(1), "g".into());
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        recorder.record(202, at);
        let sent = recorder.next_publication().expect("one publication");
        assert!(sent.publication_id.is_some());
        // Not acknowledged; meanwhile the same window gets another answer.
        recorder.record(503, at);
        assert_eq!(
            recorder.next_publication(),
            Some(sent.clone()),
            "the publication in doubt is sent again as it was"
        );
        recorder.acknowledged(&sent);
        let later = drain(&recorder);
        assert_eq!(later.len(), 1, "{later:?}");
        assert_eq!((later[0].good, later[0].total), (0, 1));
        assert_ne!(later[0].publication_id, sent.publication_id);
        // A late acknowledgement of an earlier copy leaves the publication now in doubt alone.
        recorder.record(202, at);
        let current = recorder.next_publication().expect("a new publication");
        recorder.acknowledged(&sent);
        assert_eq!(recorder.next_publication(), Some(current));
    }
}
