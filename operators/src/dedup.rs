//! Operator: de-duplicates events by `eventId` and by `(tenantId, idempotencyKey)` within a
//! retention window; a repeat with another payload is not dropped but dead-lettered.
//!
//! Memory is bounded by the retention: identities older than the newest receive time minus the
//! retention are no longer matched, and their memory is dropped a quarter of a retention at a
//! time. The state is seeded at start from what is already stored, so a
//! duplicate that arrives after a restart is still recognised.

use std::collections::{BTreeMap, HashMap};
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

/// A payload's canonical hash as its first 16 bytes (of the SHA-256 its hex spells). Two
/// payloads of one identity are told apart by it unless their SHA-256 digests share 128 bits:
/// as unlikely as the [`KeyDigest`] colliding.
type PayloadDigest = [u8; 16];

/// A tenant and one of its idempotency keys, as the first 16 bytes of their SHA-256: a fixed
/// size whatever the key's length. Telling two apart by this digest fails only on a SHA-256
/// collision, and a caller can only choose keys of its own tenant.
type KeyDigest = [u8; 16];

/// What is remembered of one identity: the payload it was accepted with and when it came
/// (microseconds since the Unix epoch, the precision PostgreSQL stores the receive time in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Remembered {
    payload: PayloadDigest,
    received: i64,
}

/// A receive time in microseconds since the Unix epoch.
fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

/// The first 16 bytes of a hex SHA-256; any other text (never written by Sentinel) by its own
/// SHA-256, so that equal texts still compare equal.
fn payload_digest(hash: &str) -> PayloadDigest {
    let mut full = [0u8; 32];
    if hex::decode_to_slice(hash, &mut full).is_err() {
        full = Sha256::digest(hash.as_bytes()).into();
    }
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&full[..16]);
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

/// How many generations one retention spans: each identity is looked up in every generation
/// alive (at most this many plus one), and a generation is dropped whole once its newest
/// possible receive time is past the retention, so memory holds up to a quarter of a retention
/// more than the retention itself.
const GENERATIONS_PER_RETENTION: i64 = 4;

/// The identities received within one span of receive time.
#[derive(Debug, Clone, Default)]
struct Generation {
    by_id: HashMap<Uuid, Remembered>,
    by_key: HashMap<KeyDigest, Remembered>,
}

/// What the operator remembers: per identity, one entry of 40 bytes for its event id and one
/// for its tenant and key (an id or digest, 16 bytes of payload digest, the receive time),
/// none with a heap allocation of its own, in the hash tables of the generation of its receive
/// time. A generation is dropped whole once every receive time it may hold is past the
/// retention, so no per-identity queue of arrivals is kept; a lookup checks each entry's
/// receive time, so no event is judged by an identity past the retention.
#[derive(Debug, Clone)]
pub struct DedupState {
    /// The retention, in microseconds.
    retention: i64,
    /// How long an idempotency key is matched, in microseconds: at most the retention.
    key_retention: i64,
    /// The span of receive time one generation holds, in microseconds.
    generation_span: i64,
    newest: Option<i64>,
    /// Generations by the index of their span of receive time (`received / generation_span`).
    generations: BTreeMap<i64, Generation>,
    refused: Option<RefusedIdentities>,
}

impl DedupState {
    /// An empty state forgetting identities after `retention`.
    pub fn new(retention: TimeDelta) -> Self {
        let retention = retention.num_microseconds().unwrap_or(i64::MAX).max(0);
        Self {
            retention,
            key_retention: retention,
            generation_span: (retention / GENERATIONS_PER_RETENTION).max(1),
            newest: None,
            generations: BTreeMap::new(),
            refused: None,
        }
    }

    /// This state, matching a tenant's idempotency key only for `key_retention` (when shorter
    /// than the retention): the gateway frees a key once its claim expires
    /// (`SENTINEL_IDEMPOTENCY_RETENTION_SECONDS`), even for another payload, so an event it
    /// accepted under a freed key is new, not a conflict with the key's first event. Event ids
    /// are still matched for the whole retention.
    pub fn matching_keys_for(mut self, key_retention: TimeDelta) -> Self {
        let key_retention = key_retention.num_microseconds().unwrap_or(i64::MAX).max(0);
        self.key_retention = key_retention.min(self.retention);
        self
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
            let refused = Remembered {
                payload: payload_digest(&identity.payload_hash),
                received: micros(identity.received_utc),
            };
            let Some(generation) = self
                .generations
                .get_mut(&self.generation_of(refused.received))
            else {
                continue;
            };
            if generation.by_id.get(&identity.event_id) == Some(&refused) {
                generation.by_id.remove(&identity.event_id);
            }
            let key = key_digest(&identity.tenant_id, identity.idempotency_key.as_deref());
            if let Some(key) = key {
                if generation.by_key.get(&key) == Some(&refused) {
                    generation.by_key.remove(&key);
                }
            }
        }
    }

    /// A state that already knows `seen` (e.g. loaded from the database at start).
    pub fn seeded(retention: TimeDelta, seen: impl IntoIterator<Item = SeenEvent>) -> Self {
        let mut state = Self::new(retention);
        for event in seen {
            state.seed(
                event.event_id,
                &event.tenant_id,
                event.idempotency_key.as_deref(),
                &event.payload_hash,
                event.received_utc,
            );
        }
        state
    }

    /// Remembers one event stored earlier, in any order of receive time (of two stored with the
    /// same identity, the later received is kept): what a restart loads, one row at a time.
    pub fn seed(
        &mut self,
        event_id: Uuid,
        tenant_id: &str,
        idempotency_key: Option<&str>,
        payload_hash: &str,
        received_utc: DateTime<Utc>,
    ) {
        let received = micros(received_utc);
        self.advance(received);
        self.expire();
        let entry = Remembered {
            payload: payload_digest(payload_hash),
            received,
        };
        self.remember(event_id, key_digest(tenant_id, idempotency_key), entry);
    }

    /// Event ids currently held in memory (those of the oldest generation kept included,
    /// though some may be past the retention already).
    pub fn len(&self) -> usize {
        self.generations.values().map(|g| g.by_id.len()).sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn generation_of(&self, received: i64) -> i64 {
        received.div_euclid(self.generation_span)
    }

    fn advance(&mut self, received: i64) {
        self.newest = Some(self.newest.map_or(received, |n| n.max(received)));
    }

    /// Identities received before this are forgotten.
    fn horizon(&self) -> Option<i64> {
        self.horizon_for(self.retention)
    }

    /// What was received before this is past `retention` (microseconds).
    fn horizon_for(&self, retention: i64) -> Option<i64> {
        self.newest.map(|newest| newest.saturating_sub(retention))
    }

    /// Drops the generations whose every receive time is before the horizon.
    fn expire(&mut self) {
        let Some(horizon) = self.horizon() else {
            return;
        };
        // Generation g holds receive times up to (g + 1) * span - 1.
        let first_kept = self.generation_of(horizon);
        while let Some(entry) = self.generations.first_entry() {
            if *entry.key() >= first_kept {
                break;
            }
            entry.remove();
        }
    }

    /// Remembers an accepted identity, unless it is past the retention already (it would never
    /// be looked at again: the horizon only moves forward).
    fn remember(&mut self, event_id: Uuid, key: Option<KeyDigest>, entry: Remembered) {
        if self
            .horizon()
            .is_some_and(|horizon| entry.received < horizon)
        {
            return;
        }
        let generation = self
            .generations
            .entry(self.generation_of(entry.received))
            .or_default();
        // What this replaces was received earlier (judged: past the retention; seeded: an older
        // copy loaded later), unless seeding loads the older copy second: keep the later one.
        let keep_later = |held: &mut Remembered| {
            if held.received <= entry.received {
                *held = entry;
            }
        };
        if let Some(key) = key {
            generation
                .by_key
                .entry(key)
                .and_modify(keep_later)
                .or_insert(entry);
        }
        generation
            .by_id
            .entry(event_id)
            .and_modify(keep_later)
            .or_insert(entry);
    }

    /// The live entry of an identity, newest generation first.
    fn find<K: std::hash::Hash + Eq>(
        &self,
        horizon: i64,
        map: fn(&Generation) -> &HashMap<K, Remembered>,
        key: &K,
    ) -> Option<Remembered> {
        self.generations
            .values()
            .rev()
            .filter_map(|generation| map(generation).get(key))
            .find(|entry| entry.received >= horizon)
            .copied()
    }

    /// Judges one event and remembers it when it is new.
    pub fn judge(&mut self, row: EventRow) -> Deduplicated {
        let received = micros(row.received_utc);
        self.advance(received);
        self.expire();
        let horizon = self.horizon().expect("advanced above");
        let payload = payload_digest(&row.payload_hash);
        if let Some(entry) = self.find(horizon, |g| &g.by_id, &row.event_id) {
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
        let key_horizon = self
            .horizon_for(self.key_retention)
            .expect("advanced above");
        let same_key = key.and_then(|key| self.find(key_horizon, |g| &g.by_key, &key));
        if let Some(entry) = same_key {
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
        self.remember(row.event_id, key, Remembered { payload, received });
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
        assert_eq!(
            verdict(&state.judge(row(1, None, "a", 12, 2))),
            "unique",
            "event 1 is past the retention"
        );
        // Its memory goes with its generation (a quarter of the retention, here 0-2.5 s),
        // once the horizon (newest minus 10 s) has passed all of it.
        assert_eq!(state.len(), 3, "held until its generation is past");
        assert_eq!(verdict(&state.judge(row(3, None, "a", 13, 3))), "unique");
        assert_eq!(
            state.len(),
            3,
            "event 1 at 0 s forgotten, events 2, 1 and 3 held"
        );
        assert_eq!(verdict(&state.judge(row(2, None, "a", 14, 4))), "duplicate");
    }

    #[test]
    fn a_key_freed_by_the_gateway_is_new_while_its_event_id_is_still_matched() {
        let mut state =
            DedupState::new(TimeDelta::seconds(100)).matching_keys_for(TimeDelta::seconds(10));
        assert_eq!(
            verdict(&state.judge(row(1, Some("k"), "a", 0, 0))),
            "unique"
        );
        assert_eq!(
            verdict(&state.judge(row(2, Some("k"), "b", 5, 1))),
            "idempotency_key_conflict",
            "within the claim's retention the key is taken"
        );
        assert_eq!(
            verdict(&state.judge(row(3, Some("k"), "c", 11, 2))),
            "unique",
            "the gateway freed the key: another payload under it is a new event"
        );
        assert_eq!(
            verdict(&state.judge(row(1, Some("other"), "z", 50, 3))),
            "duplicate_event_id_conflict",
            "event ids are matched for the whole retention"
        );
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
    fn seeding_in_any_order_keeps_the_later_of_two_copies_of_a_key() {
        // The same key stored twice (reused once its claim had expired), loaded newest first.
        let newer = SeenEvent::of(&row(2, Some("k"), "new", 5, 1));
        let older = SeenEvent::of(&row(1, Some("k"), "old", 1, 0));
        let mut state = DedupState::seeded(TimeDelta::hours(1), [newer, older]);
        assert_eq!(
            verdict(&state.judge(row(3, Some("k"), "new", 6, 2))),
            "duplicate"
        );
        assert_eq!(
            verdict(&state.judge(row(4, Some("k"), "old", 7, 3))),
            "idempotency_key_conflict"
        );
        assert_eq!(
            verdict(&state.judge(row(1, None, "old", 8, 4))),
            "duplicate"
        );
    }

    #[test]
    fn seeding_skips_what_is_past_the_retention_whatever_the_order() {
        let recent = SeenEvent::of(&row(2, None, "a", 100, 1));
        let stale = SeenEvent::of(&row(1, None, "a", 0, 0));
        let state = DedupState::seeded(TimeDelta::seconds(10), [recent, stale]);
        assert_eq!(state.len(), 1);
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
    fn oracle(
        rows: &[EventRow],
        retention: TimeDelta,
        key_retention: TimeDelta,
    ) -> Vec<&'static str> {
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
                a.received_utc >= newest.unwrap() - key_retention.min(retention)
                    && row.idempotency_key.is_some()
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
            // Keys matched for the whole retention, or for less (a shorter claim retention).
            let key_retention = TimeDelta::seconds(rng.random_range(0..40));
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
            let mut state = DedupState::new(retention).matching_keys_for(key_retention);
            let got: Vec<&str> = rows
                .iter()
                .cloned()
                .map(|r| verdict(&state.judge(r)))
                .collect();
            assert_eq!(got, oracle(&rows, retention, key_retention), "seed {seed}");
            // Memory: no generation is kept once all it may hold is past the retention.
            let horizon = state.horizon().expect("judged some");
            for index in state.generations.keys() {
                let newest_held = (index + 1) * state.generation_span - 1;
                assert!(
                    newest_held >= horizon,
                    "seed {seed}: generation {index} kept"
                );
            }
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
