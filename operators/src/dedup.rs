//! Operator: de-duplicates events by `eventId` and by `(tenantId, idempotencyKey)` within a
//! retention window; a repeat with another payload is not dropped but dead-lettered.
//!
//! Memory is bounded by the retention: identities older than the newest receive time minus the
//! retention are forgotten. The state is seeded at start from what is already stored, so a
//! duplicate that arrives after a restart is still recognised.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;
use timely::progress::Timestamp;
use uuid::Uuid;

use crate::record::{DeadLetter, DeadLetterReason, EventRow};

/// The identity of an accepted event, as remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenEvent {
    /// The event's id.
    pub event_id: Uuid,
    /// Its tenant.
    pub tenant_id: String,
    /// Its idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Its canonical payload hash.
    pub payload_hash: String,
    /// When the gateway received it.
    pub received_utc: DateTime<Utc>,
}

impl SeenEvent {
    /// The identity of `row`.
    pub fn of(row: &EventRow) -> Self {
        Self {
            event_id: row.event_id,
            tenant_id: row.tenant_id.clone(),
            idempotency_key: row.idempotency_key.clone(),
            payload_hash: row.payload_hash.clone(),
            received_utc: row.received_utc,
        }
    }
}

/// Identities the database refused to store (`database_rejected` dead letters), handed by a
/// worker's writer back to the worker's de-duplication, which forgets them at its next input:
/// a copy sent again once the cause is mended (a replay of the dead letter) is then stored,
/// not dropped as a duplicate of an event that never was.
#[derive(Debug, Clone, Default)]
pub struct RefusedIdentities(Arc<Mutex<Vec<SeenEvent>>>);

impl RefusedIdentities {
    /// Hands over identities to forget.
    pub fn push(&self, refused: impl IntoIterator<Item = SeenEvent>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(refused);
    }

    /// Takes every identity handed over so far.
    fn take(&self) -> Vec<SeenEvent> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The verdict on one event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Deduplicated {
    /// First time seen: goes on.
    Unique(EventRow),
    /// Seen before with the same payload: dropped (and counted).
    Duplicate(EventRow),
    /// Seen before with another payload: dead-lettered.
    Conflict(DeadLetter),
}

/// A payload's canonical hash as 32 bytes (the SHA-256 its hex spells).
type PayloadDigest = [u8; 32];

/// A tenant and one of its idempotency keys, as the first 16 bytes of their SHA-256: a fixed
/// size whatever the key's length. Telling two apart by this digest fails only on a SHA-256
/// collision, and a caller can only choose keys of its own tenant.
type KeyDigest = [u8; 16];

/// What is remembered of one identity: the payload it was accepted with and when it came.
#[derive(Debug, Clone, Copy)]
struct Remembered {
    payload: PayloadDigest,
    received: DateTime<Utc>,
}

/// One accepted identity, in the order it was remembered.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    received: DateTime<Utc>,
    event_id: Uuid,
    key: Option<KeyDigest>,
}

/// The 32 bytes of a hex SHA-256; any other text (never written by Sentinel) by its own
/// SHA-256, so that equal texts still compare equal.
fn payload_digest(hash: &str) -> PayloadDigest {
    let mut digest = [0u8; 32];
    if hex::decode_to_slice(hash, &mut digest).is_err() {
        digest = Sha256::digest(hash.as_bytes()).into();
    }
    digest
}

/// The digest of an event's tenant and idempotency key, when it has a key.
fn key_digest(tenant_id: &str, key: Option<&str>) -> Option<KeyDigest> {
    let key = key?;
    let mut hasher = Sha256::new();
    hasher.update((tenant_id.len() as u64).to_be_bytes());
    hasher.update(tenant_id.as_bytes());
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    let mut short = [0u8; 16];
    short.copy_from_slice(&digest[..16]);
    Some(short)
}

/// Forgets `key`'s entry if it is still the one received at `received` (a later arrival of the
/// same identity, accepted once that one had expired, replaced it and stays).
fn forget<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Remembered>,
    key: K,
    received: DateTime<Utc>,
) {
    if let Entry::Occupied(entry) = map.entry(key) {
        if entry.get().received == received {
            entry.remove();
        }
    }
}

/// What the operator remembers: fixed-size entries per identity (two hash-map entries and one
/// arrival, ~170 bytes, 300-660 of resident memory with the tables' spare room as `bench`
/// measures it: the tables grow in steps), none with a heap allocation of its own.
///
/// Arrivals are forgotten in the order they came, once the oldest is past the retention; an
/// identity that came out of receive-time order may so be kept a little longer than the
/// retention, but a lookup checks its receive time, so no event is judged by it after that.
#[derive(Debug, Clone)]
pub struct DedupState {
    retention: TimeDelta,
    newest: Option<DateTime<Utc>>,
    by_id: HashMap<Uuid, Remembered>,
    by_key: HashMap<KeyDigest, Remembered>,
    arrivals: VecDeque<Arrival>,
    refused: Option<RefusedIdentities>,
}

impl DedupState {
    /// An empty state forgetting identities after `retention`.
    pub fn new(retention: TimeDelta) -> Self {
        Self {
            retention,
            newest: None,
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            arrivals: VecDeque::new(),
            refused: None,
        }
    }

    /// This state, also forgetting what `refused` hands over (see [`RefusedIdentities`]).
    pub fn forgetting(mut self, refused: RefusedIdentities) -> Self {
        self.refused = Some(refused);
        self
    }

    /// Forgets the identities the writer handed over since the last call: each only while it
    /// is still remembered with the refused payload and receive time.
    pub fn forget_refused(&mut self) {
        let Some(refused) = self.refused.as_ref().map(RefusedIdentities::take) else {
            return;
        };
        for identity in refused {
            let payload = payload_digest(&identity.payload_hash);
            let received = identity.received_utc;
            let is_it = |entry: &Remembered| entry.payload == payload && entry.received == received;
            if self.by_id.get(&identity.event_id).is_some_and(is_it) {
                self.by_id.remove(&identity.event_id);
            }
            let key = key_digest(&identity.tenant_id, identity.idempotency_key.as_deref());
            if let Some(key) = key {
                if self.by_key.get(&key).is_some_and(is_it) {
                    self.by_key.remove(&key);
                }
            }
        }
    }

    /// A state that already knows `seen` (e.g. loaded from the database at start).
    pub fn seeded(retention: TimeDelta, seen: impl IntoIterator<Item = SeenEvent>) -> Self {
        let mut state = Self::new(retention);
        for event in seen {
            state.advance(event.received_utc);
            let key = key_digest(&event.tenant_id, event.idempotency_key.as_deref());
            state.remember(
                event.event_id,
                key,
                payload_digest(&event.payload_hash),
                event.received_utc,
            );
        }
        state.expire();
        state
    }

    /// Identities currently remembered.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn advance(&mut self, received: DateTime<Utc>) {
        self.newest = Some(self.newest.map_or(received, |n| n.max(received)));
    }

    /// Identities received before this are forgotten.
    fn horizon(&self) -> Option<DateTime<Utc>> {
        self.newest.map(|newest| newest - self.retention)
    }

    fn expire(&mut self) {
        let Some(horizon) = self.horizon() else {
            return;
        };
        while let Some(oldest) = self.arrivals.front().copied() {
            if oldest.received >= horizon {
                break;
            }
            self.arrivals.pop_front();
            forget(&mut self.by_id, oldest.event_id, oldest.received);
            if let Some(key) = oldest.key {
                forget(&mut self.by_key, key, oldest.received);
            }
        }
    }

    fn remember(
        &mut self,
        event_id: Uuid,
        key: Option<KeyDigest>,
        payload: PayloadDigest,
        received: DateTime<Utc>,
    ) {
        let entry = Remembered { payload, received };
        if let Some(key) = key {
            self.by_key.insert(key, entry);
        }
        self.by_id.insert(event_id, entry);
        self.arrivals.push_back(Arrival {
            received,
            event_id,
            key,
        });
    }

    /// Judges one event and remembers it when it is new.
    pub fn judge(&mut self, row: EventRow) -> Deduplicated {
        self.advance(row.received_utc);
        self.expire();
        let horizon = self.horizon().expect("advanced above");
        let live = |entry: &&Remembered| entry.received >= horizon;
        let payload = payload_digest(&row.payload_hash);
        if let Some(entry) = self.by_id.get(&row.event_id).filter(live) {
            if entry.payload == payload {
                return Deduplicated::Duplicate(row);
            }
            let message = format!(
                "event id {} was already accepted with another payload",
                row.event_id
            );
            return Deduplicated::Conflict(
                row.into_dead_letter(DeadLetterReason::DuplicateEventIdConflict, message),
            );
        }
        let key = key_digest(&row.tenant_id, row.idempotency_key.as_deref());
        if let Some(entry) = key.and_then(|key| self.by_key.get(&key)).filter(live) {
            if entry.payload == payload {
                return Deduplicated::Duplicate(row);
            }
            let message = format!(
                "idempotency key {:?} of tenant {:?} was already used with another payload",
                row.idempotency_key.as_deref().unwrap_or_default(),
                row.tenant_id
            );
            return Deduplicated::Conflict(
                row.into_dead_letter(DeadLetterReason::IdempotencyKeyConflict, message),
            );
        }
        self.remember(row.event_id, key, payload, row.received_utc);
        Deduplicated::Unique(row)
    }
}

/// De-duplicates a stream of events, each worker on its own (the Kafka key keeps an event's
/// copies in one partition, hence on one worker); the commit sink catches conflicts that cross
/// partitions.
pub fn dedup<'scope, T: Timestamp>(
    events: StreamVec<'scope, T, EventRow>,
    state: DedupState,
) -> StreamVec<'scope, T, Deduplicated> {
    dedup_observed(events, state, |_| {})
}

/// [`dedup`], telling `observe` the number of remembered identities after each input batch
/// (for the dedup-state-size metric).
pub fn dedup_observed<'scope, T: Timestamp>(
    events: StreamVec<'scope, T, EventRow>,
    state: DedupState,
    mut observe: impl FnMut(usize) + 'static,
) -> StreamVec<'scope, T, Deduplicated> {
    let mut state = state;
    events.unary(Pipeline, "Dedup", move |_capability, _info| {
        move |input, output| {
            input.for_each(|capability, data| {
                state.forget_refused();
                let mut session = output.session(&capability);
                for row in data.drain(..) {
                    let parent = row.trace_parent.filter(|_| crate::spans::enabled());
                    let Some(parent) = parent else {
                        session.give(state.judge(row));
                        continue;
                    };
                    let started = std::time::SystemTime::now();
                    let attributes = crate::spans::event_attributes(
                        &row.tenant_id,
                        &row.event_id.to_string(),
                        &row.event_type,
                        &row.source,
                        &row.stream_key,
                        row.idempotency_key.as_deref(),
                    );
                    let verdict = state.judge(row);
                    let outcome = match &verdict {
                        Deduplicated::Unique(_) => "unique",
                        Deduplicated::Duplicate(_) => "duplicate",
                        Deduplicated::Conflict(_) => "conflict",
                    };
                    crate::spans::Hop::new(
                        "pipeline.dedup",
                        opentelemetry::trace::SpanKind::Internal,
                        Some(parent),
                        started,
                        std::time::SystemTime::now(),
                    )
                    .with(attributes)
                    .with([opentelemetry::KeyValue::new("dedup.outcome", outcome)])
                    .record();
                    session.give(verdict);
                }
                observe(state.len());
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::{Capture, ToStream};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn row(id: u128, key: Option<&str>, hash: &str, received: i64, offset: i64) -> EventRow {
        EventRow {
            event_id: Uuid::from_u128(id),
            tenant_id: "acme".into(),
            source: "s".into(),
            event_type: "t".into(),
            stream_key: "k".into(),
            timestamp_utc: at(received),
            schema_version: 1,
            payload_json: "{}".into(),
            received_utc: at(received),
            trace_id: None,
            trace_parent: None,
            payload_hash: hash.into(),
            idempotency_key: key.map(str::to_owned),
            partition: 0,
            offset,
            key: None,
            original: Vec::new(),
        }
    }

    fn verdict(d: &Deduplicated) -> &'static str {
        match d {
            Deduplicated::Unique(_) => "unique",
            Deduplicated::Duplicate(_) => "duplicate",
            Deduplicated::Conflict(dl) => dl.reason.code(),
        }
    }

    #[test]
    fn repeats_are_dropped_and_conflicts_dead_lettered() {
        let mut state = DedupState::new(TimeDelta::hours(24));
        let verdicts: Vec<&str> = [
            row(1, Some("k1"), "a", 0, 0),
            row(1, Some("k1"), "a", 1, 1),
            row(1, None, "b", 2, 2),
            row(2, Some("k1"), "c", 3, 3),
            row(3, Some("k3"), "d", 4, 4),
        ]
        .into_iter()
        .map(|r| verdict(&state.judge(r)))
        .collect();
        assert_eq!(
            verdicts,
            [
                "unique",
                "duplicate",
                "duplicate_event_id_conflict",
                "idempotency_key_conflict",
                "unique"
            ]
        );
        assert_eq!(state.len(), 2);
    }

    #[test]
    fn identities_are_forgotten_after_the_retention() {
        let mut state = DedupState::new(TimeDelta::seconds(10));
        assert_eq!(verdict(&state.judge(row(1, None, "a", 0, 0))), "unique");
        assert_eq!(verdict(&state.judge(row(2, None, "a", 11, 1))), "unique");
        assert_eq!(state.len(), 1, "event 1 expired");
        assert_eq!(verdict(&state.judge(row(1, None, "a", 12, 2))), "unique");
    }

    #[test]
    fn a_seeded_state_recognises_what_was_stored_before_a_restart() {
        let stored = SeenEvent::of(&row(9, Some("k9"), "h", 0, 0));
        let mut state = DedupState::seeded(TimeDelta::hours(1), [stored]);
        assert_eq!(
            verdict(&state.judge(row(9, Some("k9"), "h", 5, 1))),
            "duplicate"
        );
        assert_eq!(
            verdict(&state.judge(row(9, None, "other", 6, 2))),
            "duplicate_event_id_conflict"
        );
    }

    #[test]
    fn an_identity_the_database_refused_is_forgotten_so_its_resend_is_new() {
        let refused = RefusedIdentities::default();
        let mut state = DedupState::new(TimeDelta::hours(1)).forgetting(refused.clone());
        let first = row(1, Some("k1"), "a", 0, 0);
        let other = row(2, Some("k2"), "b", 1, 1);
        assert_eq!(verdict(&state.judge(first.clone())), "unique");
        assert_eq!(verdict(&state.judge(other.clone())), "unique");
        // Not yet handed over: still a duplicate.
        assert_eq!(
            verdict(&state.judge(row(1, Some("k1"), "a", 2, 2))),
            "duplicate"
        );
        refused.push([SeenEvent::of(&first)]);
        state.forget_refused();
        assert_eq!(
            verdict(&state.judge(row(1, Some("k1"), "a", 0, 3))),
            "unique",
            "the event id and its key are forgotten"
        );
        assert_eq!(
            verdict(&state.judge(row(2, Some("k2"), "b", 1, 4))),
            "duplicate",
            "what was not refused stays remembered"
        );
        // A refusal of another payload under a remembered id forgets nothing.
        refused.push([SeenEvent::of(&row(2, Some("k2"), "other", 1, 5))]);
        state.forget_refused();
        assert_eq!(
            verdict(&state.judge(row(2, Some("k2"), "b", 1, 6))),
            "duplicate"
        );
    }

    /// The from-scratch recomputation the operator must agree with.
    fn oracle(rows: &[EventRow], retention: TimeDelta) -> Vec<&'static str> {
        let mut accepted: Vec<&EventRow> = Vec::new();
        let mut newest: Option<DateTime<Utc>> = None;
        let mut out = Vec::new();
        for row in rows {
            newest = Some(newest.map_or(row.received_utc, |n| n.max(row.received_utc)));
            let horizon = newest.unwrap() - retention;
            let live: Vec<&&EventRow> = accepted
                .iter()
                .filter(|a| a.received_utc >= horizon)
                .collect();
            let verdict = if let Some(same_id) = live.iter().find(|a| a.event_id == row.event_id) {
                if same_id.payload_hash == row.payload_hash {
                    "duplicate"
                } else {
                    "duplicate_event_id_conflict"
                }
            } else if let Some(same_key) = live.iter().find(|a| {
                row.idempotency_key.is_some()
                    && a.idempotency_key == row.idempotency_key
                    && a.tenant_id == row.tenant_id
            }) {
                if same_key.payload_hash == row.payload_hash {
                    "duplicate"
                } else {
                    "idempotency_key_conflict"
                }
            } else {
                accepted.push(row);
                "unique"
            };
            out.push(verdict);
        }
        out
    }

    #[test]
    fn randomized_streams_agree_with_a_recomputation_from_scratch() {
        for seed in 0..500u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let retention = TimeDelta::seconds(rng.random_range(1..30));
            let rows: Vec<EventRow> = (0..rng.random_range(1..80))
                .map(|offset| {
                    let id = rng.random_range(0..12u128);
                    let key = ["k1", "k2", "k3"][rng.random_range(0..3)];
                    let key = rng.random_bool(0.7).then_some(key);
                    let hash = ["h1", "h2"][rng.random_range(0..2)];
                    // Receive times mostly rise, sometimes go back (out of order).
                    let received = offset / 2 - rng.random_range(0..4);
                    let mut row = row(id, key, hash, received, offset);
                    // The same key of two tenants is two identities.
                    row.tenant_id = ["acme", "umbr"][rng.random_range(0..2)].into();
                    row
                })
                .collect();
            let mut state = DedupState::new(retention);
            let got: Vec<&str> = rows
                .iter()
                .cloned()
                .map(|r| verdict(&state.judge(r)))
                .collect();
            assert_eq!(got, oracle(&rows, retention), "seed {seed}");
        }
    }

    #[test]
    fn the_operator_splits_a_stream_by_verdict() {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        timely::execute(timely::Config::thread(), move |worker| {
            let tx = tx.lock().unwrap().clone();
            worker.dataflow::<u64, _, _>(|scope| {
                let input = vec![
                    row(1, None, "a", 0, 0),
                    row(1, None, "a", 1, 1),
                    row(1, None, "b", 2, 2),
                ]
                .to_stream(scope)
                .container::<Vec<_>>();
                dedup(input, DedupState::new(TimeDelta::hours(1)))
                    .container::<Vec<_>>()
                    .capture_into(tx);
            });
        })
        .unwrap();
        let verdicts: Vec<&str> = rx
            .extract()
            .into_iter()
            .flat_map(|(_, batch): (u64, Vec<Deduplicated>)| batch)
            .map(|d| verdict(&d))
            .collect();
        assert_eq!(
            verdicts,
            ["unique", "duplicate", "duplicate_event_id_conflict"]
        );
    }
}
