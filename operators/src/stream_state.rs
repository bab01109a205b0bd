//! Operator: per `(tenantId, streamKey)`, the latest event by `timestampUtc` (ties by offset) and
//! the event count, maintained incrementally in a differential arrangement.
//!
//! A stream's events of one batch enter as one update whose *difference* is a [`StreamSummary`]
//! — a semigroup that adds counts and keeps the latest event — so the arrangement consolidates
//! to one entry per stream and memory stays proportional to the number of streams, not of
//! events. Out-of-order arrivals never move a stream backwards, because the maximum does not
//! care about arrival order.
//! The arrangement is worker-local (the Kafka key keeps a stream in one partition), so a stream's
//! state commits in the same transaction as the offsets of the events that changed it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use differential_dataflow::difference::{IsZero, Monoid, Semigroup};
use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::trace::implementations::{ValBatcher, ValBuilder, ValSpine};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Concat, OkErr, ToStream};
use timely::dataflow::{Scope, StreamVec};
use uuid::Uuid;

use crate::record::EventRow;

/// A stream's identity: tenant and stream key.
pub type StreamId = (String, String);

/// What one batch adds to a stream in the arrangement: `((stream, ()), time, summary)`.
type SummaryUpdate = ((StreamId, ()), u64, StreamSummary);

/// The latest event of a stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LatestEvent {
    /// Event time; the first field, so that the derived order is "latest first by time".
    pub timestamp_utc: DateTime<Utc>,
    /// Source offset, breaking ties of event time.
    pub offset: i64,
    /// Source partition.
    pub partition: i32,
    /// Event type.
    pub event_type: String,
    /// Event id.
    pub event_id: Uuid,
    /// Payload JSON text.
    pub payload_json: String,
}

/// What a set of events of one stream adds up to: how many, and the latest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamSummary {
    /// Number of events.
    pub count: i64,
    /// The latest of them.
    pub latest: Option<LatestEvent>,
}

impl StreamSummary {
    /// The summary of one event.
    pub fn of(row: &EventRow) -> Self {
        Self {
            count: 1,
            latest: Some(LatestEvent {
                timestamp_utc: row.timestamp_utc,
                offset: row.offset,
                partition: row.partition,
                event_type: row.event_type.clone(),
                event_id: row.event_id,
                payload_json: row.payload_json.clone(),
            }),
        }
    }
}

impl IsZero for StreamSummary {
    fn is_zero(&self) -> bool {
        self.count == 0 && self.latest.is_none()
    }
}

impl Semigroup for StreamSummary {
    fn plus_equals(&mut self, rhs: &Self) {
        self.count += rhs.count;
        if rhs.latest > self.latest {
            self.latest.clone_from(&rhs.latest);
        }
    }
}

impl Monoid for StreamSummary {
    fn zero() -> Self {
        Self {
            count: 0,
            latest: None,
        }
    }
}

/// A stream's maintained state, as `stream_state` stores it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamState {
    /// Tenant.
    pub tenant_id: String,
    /// Stream key.
    pub stream_key: String,
    /// Number of events of the stream.
    pub event_count: i64,
    /// The latest event.
    pub latest: LatestEvent,
}

/// Maintains the state of every stream of `events` (unique events only), starting from `seed`
/// (the states stored before a restart, entered at time 0). Returns `events` themselves, passed
/// on unchanged, and, at each time, the new state of every stream that changed; nothing is
/// emitted for the seed itself.
///
/// The events pass through rather than being shared with the caller, which would clone each
/// whole row: only the latest event of each stream in a batch has its type and payload copied,
/// into the one summary per stream the batch adds to the arrangement.
pub fn stream_state<'scope>(
    events: StreamVec<'scope, u64, EventRow>,
    seed: Vec<StreamState>,
) -> (
    StreamVec<'scope, u64, EventRow>,
    StreamVec<'scope, u64, StreamState>,
) {
    let scope: Scope<'scope, u64> = events.scope();
    let seeded = seed
        .into_iter()
        .map(|state| {
            let id = (state.tenant_id, state.stream_key);
            let summary = StreamSummary {
                count: state.event_count,
                latest: Some(state.latest),
            };
            ((id, ()), 0u64, summary)
        })
        .to_stream(scope)
        .container::<Vec<_>>();
    let (events, updates) = events
        .unary::<CapacityContainerBuilder<Vec<Result<EventRow, SummaryUpdate>>>, _, _, _>(
            Pipeline,
            "StreamSummaries",
            |_capability, _info| {
                move |input, output| {
                    input.for_each(|capability, data| {
                        let time = *capability.least().expect("an input stamp holds a time");
                        let mut session = output.session(&capability);
                        for (id, summary) in batch_summaries(data) {
                            session.give(Err(((id, ()), time, summary)));
                        }
                        session.give_iterator(data.drain(..).map(Ok));
                    });
                }
            },
        )
        .ok_err(|row_or_update| row_or_update);
    let updates = updates.concat(seeded);
    type In = ValSpine<StreamId, (), u64, StreamSummary>;
    type Out = ValSpine<StreamId, (LatestEvent, i64), u64, isize>;
    let arranged = arrange_core::<_, _, ValBatcher<StreamId, (), u64, StreamSummary>, In>(
        updates,
        Pipeline,
        "StreamStateInput",
        ValBatcher::new,
    );
    let states = arranged
        .reduce_abelian::<_, ValBuilder<StreamId, (LatestEvent, i64), u64, isize>, Out, _, _>(
            "StreamState",
            |_id, input, output| {
                let summary = &input[0].1;
                if let Some(latest) = &summary.latest {
                    output.push(((latest.clone(), summary.count), 1));
                }
            },
            |buffer, id, updates| {
                buffer.clear();
                buffer.extend(
                    updates
                        .drain(..)
                        .map(|(value, time, diff)| ((id.clone(), value), time, diff)),
                );
            },
        );
    let states = states
        .as_collection(|id: &StreamId, value: &(LatestEvent, i64)| (id.clone(), value.clone()))
        .inner
        .unary(Pipeline, "StreamStateChanges", |_capability, _info| {
            move |input, output| {
                input.for_each(|capability, data| {
                    let mut session = output.session(&capability);
                    for (((tenant_id, stream_key), (latest, event_count)), time, diff) in
                        data.drain(..)
                    {
                        // Insertions are the new states; retractions of old ones and the seed are not news.
                        if diff > 0 && time > 0 {
                            session.give(StreamState {
                                tenant_id,
                                stream_key,
                                event_count,
                                latest,
                            });
                        }
                    }
                });
            }
        });
    (events, states)
}

/// One summary per stream of `rows`: how many, and the latest, whose type and payload alone are
/// copied. The latest is the greatest by [`LatestEvent`]'s order, as [`Semigroup`] keeps it.
fn batch_summaries(rows: &[EventRow]) -> Vec<(StreamId, StreamSummary)> {
    fn order(row: &EventRow) -> (DateTime<Utc>, i64, i32, &str, Uuid, &str) {
        (
            row.timestamp_utc,
            row.offset,
            row.partition,
            &row.event_type,
            row.event_id,
            &row.payload_json,
        )
    }
    let mut streams: HashMap<(&str, &str), (i64, &EventRow)> = HashMap::new();
    for row in rows {
        streams
            .entry((&row.tenant_id, &row.stream_key))
            .and_modify(|(count, latest)| {
                *count += 1;
                if order(row) > order(latest) {
                    *latest = row;
                }
            })
            .or_insert((1, row));
    }
    streams
        .into_iter()
        .map(|((tenant, stream), (count, latest))| {
            let summary = StreamSummary {
                count,
                ..StreamSummary::of(latest)
            };
            ((tenant.to_owned(), stream.to_owned()), summary)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::{mpsc, Mutex};

    use rand::{Rng, SeedableRng};
    use timely::dataflow::operators::capture::{Event, Extract};
    use timely::dataflow::operators::vec::Input;
    use timely::dataflow::operators::{Capture, Probe};

    fn event(stream: &str, seconds: i64, offset: i64) -> EventRow {
        EventRow {
            event_id: Uuid::from_u128(offset as u128),
            tenant_id: "acme".into(),
            source: "s".into(),
            event_type: format!("type-{offset}"),
            stream_key: stream.into(),
            timestamp_utc: DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap(),
            schema_version: 1,
            payload_json: format!("{{\"offset\":{offset}}}"),
            received_utc: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            trace_id: None,
            trace_parent: None,
            payload_hash: String::new(),
            idempotency_key: None,
            partition: 0,
            offset,
            key: None,
            original: Vec::new(),
        }
    }

    /// Feeds `batches` at times 1, 2, … and returns what the operator emitted at each time,
    /// having checked that it passed every event on unchanged, at the time it came in.
    fn run(batches: Vec<Vec<EventRow>>, seed: Vec<StreamState>) -> Vec<(u64, Vec<StreamState>)> {
        let (tx, rx) = mpsc::channel::<Event<u64, Vec<StreamState>>>();
        let tx = Mutex::new(tx);
        let (rows_tx, rows_rx) = mpsc::channel::<Event<u64, Vec<EventRow>>>();
        let rows_tx = Mutex::new(rows_tx);
        let sent: Vec<(u64, Vec<EventRow>)> = batches
            .iter()
            .enumerate()
            .filter(|(_, batch)| !batch.is_empty())
            .map(|(index, batch)| (index as u64 + 1, batch.clone()))
            .collect();
        let batches = Mutex::new(Some(batches));
        let seed = Mutex::new(Some(seed));
        timely::execute(timely::Config::thread(), move |worker| {
            let tx = tx.lock().unwrap().clone();
            let rows_tx = rows_tx.lock().unwrap().clone();
            let seed = seed.lock().unwrap().take().unwrap();
            let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, events) = scope.new_input::<EventRow>();
                let (rows, states) = stream_state(events, seed);
                let (probe, states) = states.probe();
                states.capture_into(tx);
                rows.capture_into(rows_tx);
                (input, probe)
            });
            input.advance_to(1);
            for (index, batch) in batches
                .lock()
                .unwrap()
                .take()
                .unwrap()
                .into_iter()
                .enumerate()
            {
                for row in batch {
                    input.send(row);
                }
                input.advance_to(index as u64 + 2);
                while probe.less_than(input.time()) {
                    worker.step();
                }
            }
        })
        .unwrap();
        let mut passed = rows_rx.extract();
        for (_, rows) in &mut passed {
            rows.sort_by_key(|row| row.offset);
        }
        let mut sent = sent;
        for (_, rows) in &mut sent {
            rows.sort_by_key(|row| row.offset);
        }
        assert_eq!(passed, sent, "every event passes on unchanged, at its time");
        rx.extract()
    }

    #[test]
    fn a_batch_adds_one_summary_per_stream_the_same_as_its_events_one_by_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let rows: Vec<EventRow> = (0..rng.random_range(1..40))
                .map(|offset| {
                    let stream = ["a", "b", "c"][rng.random_range(0..3)];
                    // Few distinct times, so that ties are broken by the offset.
                    event(stream, rng.random_range(0..4), offset)
                })
                .collect();
            let mut one_by_one: BTreeMap<StreamId, StreamSummary> = BTreeMap::new();
            for row in &rows {
                one_by_one
                    .entry((row.tenant_id.clone(), row.stream_key.clone()))
                    .or_insert_with(StreamSummary::zero)
                    .plus_equals(&StreamSummary::of(row));
            }
            let batched: BTreeMap<StreamId, StreamSummary> =
                batch_summaries(&rows).into_iter().collect();
            assert_eq!(batched, one_by_one);
        }
    }

    #[test]
    fn the_latest_event_wins_by_time_then_offset_and_late_events_only_count() {
        let out = run(
            vec![
                vec![event("a", 10, 1), event("b", 5, 2)],
                vec![event("a", 3, 3)], // late: counts, does not move "a" back
                vec![event("a", 10, 4)], // same time, higher offset: wins
            ],
            Vec::new(),
        );
        let last: BTreeMap<String, (i64, i64)> = out
            .iter()
            .flat_map(|(_, states)| states.iter())
            .map(|s| (s.stream_key.clone(), (s.event_count, s.latest.offset)))
            .collect();
        assert_eq!(last["a"], (3, 4));
        assert_eq!(last["b"], (1, 2));
        let at_two: Vec<(String, i64, i64)> = out
            .iter()
            .filter(|(time, _)| *time == 2)
            .flat_map(|(_, states)| states.iter())
            .map(|s| (s.stream_key.clone(), s.event_count, s.latest.offset))
            .collect();
        assert_eq!(
            at_two,
            vec![("a".to_owned(), 2, 1)],
            "a late event raises the count only"
        );
    }

    #[test]
    fn a_seeded_state_continues_where_it_was_and_is_not_re_emitted() {
        let stored = StreamState {
            tenant_id: "acme".into(),
            stream_key: "a".into(),
            event_count: 41,
            latest: StreamSummary::of(&event("a", 100, 7)).latest.unwrap(),
        };
        let out = run(vec![vec![], vec![event("a", 50, 8)]], vec![stored]);
        let states: Vec<&StreamState> = out.iter().flat_map(|(_, s)| s.iter()).collect();
        assert_eq!(states.len(), 1, "only the change is emitted: {states:?}");
        assert_eq!(states[0].event_count, 42);
        assert_eq!(
            states[0].latest.offset, 7,
            "the stored latest event stays the latest"
        );
    }

    #[test]
    fn randomized_batches_agree_with_a_recomputation_from_scratch() {
        for seed in 0..30u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut offset = 0;
            let batches: Vec<Vec<EventRow>> = (0..rng.random_range(1..6))
                .map(|_| {
                    (0..rng.random_range(0..12))
                        .map(|_| {
                            offset += 1;
                            let stream = ["a", "b", "c"][rng.random_range(0..3)];
                            event(stream, rng.random_range(0..8), offset)
                        })
                        .collect()
                })
                .collect();
            let out = run(batches.clone(), Vec::new());
            // From scratch: after each batch, every stream touched by it has this state.
            let mut all: Vec<EventRow> = Vec::new();
            for (index, batch) in batches.iter().enumerate() {
                all.extend(batch.iter().cloned());
                let time = index as u64 + 1;
                let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
                for stream in batch.iter().map(|e| e.stream_key.clone()) {
                    let of_stream: Vec<&EventRow> =
                        all.iter().filter(|e| e.stream_key == stream).collect();
                    let latest = of_stream
                        .iter()
                        .max_by_key(|e| (e.timestamp_utc, e.offset))
                        .unwrap();
                    expected.insert(stream, (of_stream.len() as i64, latest.offset));
                }
                let got: BTreeMap<String, (i64, i64)> = out
                    .iter()
                    .filter(|(t, _)| *t == time)
                    .flat_map(|(_, states)| states.iter())
                    .map(|s| (s.stream_key.clone(), (s.event_count, s.latest.offset)))
                    .collect();
                assert_eq!(got, expected, "seed {seed}, batch {index}");
            }
        }
    }
}
