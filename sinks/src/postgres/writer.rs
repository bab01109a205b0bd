//! The batch writer: commits events (binary COPY), dead letters and source offsets in one
//! transaction; retries transient failures forever with backoff and jitter, and isolates rows
//! the database rejects into dead letters.
//!
//! Events are copied straight into `events`: the dataflow has already removed the duplicates it
//! can see. An id the table already holds (sent again on another partition, which another
//! worker owns) aborts that copy; the batch is then written again through a staging table that
//! skips same-payload copies and dead-letters other payloads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use futures::pin_mut;
use operators::dedup::{RefusedIdentities, SeenEvent};
use operators::error_text::error_chain;
use operators::record::{DeadLetter, DeadLetterReason, EventIdentity, EventRow};
use operators::slo_window::{FreshnessObjective, PublishedSample, SloSample};
use operators::stream_state::StreamState;
use postgres_types::{to_sql_checked, IsNull, ToSql, Type};
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use super::{connect_as, CommitBatch, CommitReport, SinkError, WRITER_APPLICATION};

const EVENT_COLUMNS: &str = "id, tenant_id, source, type, stream_key, timestamp_utc, \
    schema_version, payload_jsonb, received_utc, processed_utc, trace_id, source_partition, \
    source_offset, payload_hash, idempotency_key, trace_span_id";

const EVENT_TYPES: [Type; 16] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::INT4,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
];

/// JSON text sent as `jsonb` without re-serialising it.
#[derive(Debug)]
struct RawJsonb<'a>(&'a str);

impl ToSql for RawJsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1); // jsonb binary format version
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// Where dead letters are published besides the `dead_letter` table (the dead-letter topic).
/// Called before the batch's transaction commits, so a dead letter is published at least once;
/// a failure is transient and makes the whole batch retry.
pub trait DeadLetterPublisher: Send + Sync {
    /// Publishes `dead_letters`, consumed from `source_topic`.
    fn publish<'a>(
        &'a self,
        source_topic: &'a str,
        dead_letters: &'a [DeadLetter],
    ) -> futures::future::BoxFuture<'a, Result<(), String>>;
}

/// An event's values in the order of `EVENT_COLUMNS`.
fn event_columns<'a>(
    event: &'a operators::record::EventRow,
    payload: &'a RawJsonb<'a>,
    processed_utc: &'a DateTime<Utc>,
    span_id: &'a Option<String>,
) -> [&'a (dyn ToSql + Sync); 16] {
    [
        &event.event_id,
        &event.tenant_id,
        &event.source,
        &event.event_type,
        &event.stream_key,
        &event.timestamp_utc,
        &event.schema_version,
        payload,
        &event.received_utc,
        processed_utc,
        &event.trace_id,
        &event.partition,
        &event.offset,
        &event.payload_hash,
        &event.idempotency_key,
        span_id,
    ]
}

/// The receive span id of a sampled event, stored so that later hops can join its trace.
fn sampled_span_id(event: &operators::record::EventRow) -> Option<String> {
    event
        .trace_parent
        .filter(|parent| parent.sampled())
        .map(|parent| parent.span_id_hex())
}

/// One connection's worth of writing, bound to the topic whose offsets it stores.
pub struct EventSink {
    url: String,
    topic: String,
    client: Option<Client>,
    publisher: Option<std::sync::Arc<dyn DeadLetterPublisher>>,
    /// Where the identities of events PostgreSQL refused go, for de-duplication to forget.
    refused: Option<RefusedIdentities>,
    /// What the dataflow's stream states counted that PostgreSQL did not store.
    corrections: StreamCorrections,
    /// How each stored event's freshness is sampled into `slo_samples`; `None` counts none.
    freshness: Option<FreshnessObjective>,
    /// What the batch whose COMMIT went unanswered changes in `corrections`, should it have
    /// committed.
    in_doubt: Option<CorrectionChanges>,
    /// The last commit failed in a way that may have committed on the server (the answer to
    /// COMMIT lost with the connection): the next batch is checked against the stored offsets
    /// before it is written.
    maybe_committed: bool,
}

impl EventSink {
    /// A sink for records of `topic`; it connects on first use and after every failure.
    pub fn new(url: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            topic: topic.into(),
            client: None,
            publisher: None,
            refused: None,
            corrections: StreamCorrections::default(),
            freshness: None,
            in_doubt: None,
            maybe_committed: false,
        }
    }

    /// Also hands the identity of every event PostgreSQL refuses (a `database_rejected` dead
    /// letter) to `refused`, so that the worker's de-duplication forgets it.
    pub fn with_refused_identities(mut self, refused: RefusedIdentities) -> Self {
        self.refused = Some(refused);
        self
    }

    /// Also adds the freshness sample of every event it stores to `slo_samples`, in the same
    /// transaction: events it skips (copies of stored ones) or dead-letters are not counted, and
    /// the sample is taken at the `processed_utc` the row gets.
    pub fn with_freshness_objective(mut self, freshness: FreshnessObjective) -> Self {
        self.freshness = Some(freshness);
        self
    }

    /// Also publishes every dead letter with `publisher`, before its batch commits.
    pub fn with_dead_letter_publisher(
        mut self,
        publisher: std::sync::Arc<dyn DeadLetterPublisher>,
    ) -> Self {
        self.publisher = Some(publisher);
        self
    }

    async fn client(&mut self) -> Result<&mut Client, SinkError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let client = connect_as(&self.url, WRITER_APPLICATION).await?;
            client
                .batch_execute(
                    "CREATE TEMP TABLE IF NOT EXISTS events_staging (LIKE events) \
                     ON COMMIT DELETE ROWS",
                )
                .await
                .map_err(SinkError::statement("creating the staging table"))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("client was just set"))
    }

    /// Commits one batch in one transaction. On a data error the transaction is rolled back
    /// and the batch is written again row by row, the rejected rows becoming dead letters.
    pub async fn commit(&mut self, batch: &CommitBatch) -> Result<CommitReport, SinkError> {
        let corrections = std::mem::take(&mut self.corrections);
        let mut sent = None;
        let outcome = self.commit_with(batch, &corrections, &mut sent).await;
        self.corrections = corrections;
        match outcome {
            Ok((report, changes)) => {
                // Only a committed batch moves the corrections on.
                self.corrections.apply(changes);
                Ok(report)
            }
            Err(err) => {
                // Should the COMMIT have landed unanswered, its changes apply when the retry
                // finds the batch durable. An attempt that sent no transaction (it could not
                // connect, or not ask whether the batch is durable) leaves an earlier attempt's
                // doubt as it was: that COMMIT may still have landed.
                if sent.is_some() {
                    self.in_doubt = sent.filter(|_| self.maybe_committed);
                }
                Err(err)
            }
        }
    }

    async fn commit_with(
        &mut self,
        batch: &CommitBatch,
        corrections: &StreamCorrections,
        sent: &mut Option<CorrectionChanges>,
    ) -> Result<(CommitReport, CorrectionChanges), SinkError> {
        let topic = self.topic.clone();
        let publisher = self.publisher.clone();
        let context = CommitContext {
            topic: &topic,
            publisher: publisher.as_deref(),
            corrections,
            freshness: self.freshness,
        };
        if self.maybe_committed {
            let client = self.client().await?;
            let durable = match already_committed(client, batch).await {
                Ok(durable) => durable,
                Err(err) => {
                    if err.is_retriable() {
                        self.client = None;
                    }
                    return Err(err);
                }
            };
            self.maybe_committed = false;
            if durable {
                tracing::info!(
                    progress = ?batch.progress,
                    "the batch committed before its answer was lost; not applied again"
                );
                let report = CommitReport {
                    processed_utc: Utc::now(),
                    ..CommitReport::default()
                };
                return Ok((report, self.in_doubt.take().unwrap_or_default()));
            }
            self.in_doubt = None;
        }
        let mut outcome = {
            let client = self.client().await?;
            commit_bulk(client, &context, batch, EventCopy::Direct, sent).await
        };
        if outcome
            .as_ref()
            .is_err_and(|err| err.sqlstate() == Some(UNIQUE_VIOLATION))
        {
            let client = self.client().await?;
            outcome = commit_bulk(client, &context, batch, EventCopy::Staged, sent).await;
        }
        if let Err(err) = &outcome {
            if err.is_data_error() {
                tracing::warn!(sqlstate = ?err.sqlstate(), "batch rejected, isolating rows");
                let refused = self.refused.clone();
                let client = self.client().await?;
                outcome = commit_isolating(client, &context, batch, refused.as_ref(), sent).await;
            }
        }
        if outcome.as_ref().is_err_and(SinkError::is_retriable) {
            // The connection may be broken, and the COMMIT may have landed unanswered.
            self.client = None;
            self.maybe_committed = true;
        }
        outcome
    }
}

/// Whether `batch` is durable already: its transaction stored its offsets, so stored offsets
/// at or past every position the batch reaches mean it committed (batches commit in order, and
/// a restarted pipeline resumes from the stored offsets, never before them). Retrying such a
/// batch would skip its events but add its SLO counts a second time.
async fn already_committed(client: &Client, batch: &CommitBatch) -> Result<bool, SinkError> {
    if batch.progress.is_empty() {
        return Ok(false);
    }
    let topics: Vec<&str> = batch.progress.iter().map(|p| p.topic.as_str()).collect();
    let partitions: Vec<i32> = batch.progress.iter().map(|p| p.partition).collect();
    let stored: std::collections::HashMap<(String, i32), i64> = client
        .query(
            "SELECT o.topic, o.partition, o.next_offset FROM source_offsets o \
             JOIN UNNEST($1::text[], $2::int4[]) AS u(t, p) ON o.topic = u.t AND o.partition = u.p",
            &[&topics, &partitions],
        )
        .await
        .map_err(SinkError::statement("reading the stored offsets"))?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect();
    Ok(batch.progress.iter().all(|p| {
        stored
            .get(&(p.topic.clone(), p.partition))
            .is_some_and(|&next| next >= p.next_offset)
    }))
}

async fn publish_dead_letters(
    publisher: Option<&dyn DeadLetterPublisher>,
    topic: &str,
    dead_letters: &[DeadLetter],
) -> Result<(), SinkError> {
    match publisher {
        Some(publisher) if !dead_letters.is_empty() => publisher
            .publish(topic, dead_letters)
            .await
            .map_err(SinkError::DeadLetterTopic),
        _ => Ok(()),
    }
}

/// SQLSTATE of a unique-constraint violation.
const UNIQUE_VIOLATION: &str = "23505";

/// How a batch's events reach the `events` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventCopy {
    /// Straight into `events`: fails on an id the table already holds.
    Direct,
    /// Through `events_staging`: ids already stored are skipped (same payload) or dead-lettered.
    Staged,
}

/// What every way of committing a batch writes it with.
struct CommitContext<'a> {
    /// The raw topic the batch's records come from.
    topic: &'a str,
    /// Where dead letters are published before the commit.
    publisher: Option<&'a dyn DeadLetterPublisher>,
    /// What the stream states counted that PostgreSQL did not store.
    corrections: &'a StreamCorrections,
    /// How the stored events' freshness is sampled, if it is.
    freshness: Option<FreshnessObjective>,
}

/// Everything a batch writes besides its events, once they are in: `dead_letters`, the stream
/// states and SLO windows (less the events at a position in `not_stored`), the offsets and the
/// feed's cue; then publishes the dead letters. Returns the dead-letter rows written and what the
/// batch changes in the stream corrections.
async fn store_batch_effects(
    tx: &Transaction<'_>,
    context: &CommitContext<'_>,
    batch: &CommitBatch,
    dead_letters: &[DeadLetter],
    not_stored: &HashSet<Position>,
    processed_utc: DateTime<Utc>,
) -> Result<(u64, CorrectionChanges), SinkError> {
    let written = insert_dead_letters(tx, context.topic, dead_letters).await?;
    let changes = store_stream_states(tx, batch, context.corrections, not_stored).await?;
    let freshness = context
        .freshness
        .map(|objective| (objective, processed_utc));
    store_slo_samples(tx, batch, freshness, not_stored).await?;
    store_offsets(tx, batch).await?;
    notify_feed(tx, context.topic, batch).await?;
    publish_dead_letters(context.publisher, context.topic, dead_letters).await?;
    Ok((written, changes))
}

async fn commit_bulk(
    client: &mut Client,
    context: &CommitContext<'_>,
    batch: &CommitBatch,
    copy: EventCopy,
    sent: &mut Option<CorrectionChanges>,
) -> Result<(CommitReport, CorrectionChanges), SinkError> {
    let tx = client
        .transaction()
        .await
        .map_err(SinkError::statement("beginning a transaction"))?;
    let processed_utc = Utc::now();
    let mut report = CommitReport {
        processed_utc,
        ..CommitReport::default()
    };
    let mut conflicts: Vec<DeadLetter> = Vec::new();
    let mut not_stored = HashSet::new();
    if !batch.events.is_empty() {
        let target = match copy {
            EventCopy::Direct => "events",
            EventCopy::Staged => "events_staging",
        };
        let sink = tx
            .copy_in(&format!(
                "COPY {target} ({EVENT_COLUMNS}) FROM STDIN BINARY"
            ))
            .await
            .map_err(SinkError::statement("starting the events COPY"))?;
        let writer = BinaryCopyInWriter::new(sink, &EVENT_TYPES);
        pin_mut!(writer);
        for event in &batch.events {
            let payload = RawJsonb(&event.payload_json);
            let span_id = sampled_span_id(event);
            writer
                .as_mut()
                .write(&event_columns(event, &payload, &processed_utc, &span_id))
                .await
                .map_err(SinkError::statement("copying events"))?;
        }
        let copied = writer
            .finish()
            .await
            .map_err(SinkError::statement("finishing the events COPY"))?;
        match copy {
            EventCopy::Direct => report.events_written = copied,
            EventCopy::Staged => {
                let merged = merge_staged(&tx, &batch.events, copied).await?;
                report.events_written = merged.written;
                report.duplicates_skipped = merged.skipped;
                conflicts = merged.conflicts;
                not_stored = merged.not_stored;
            }
        }
    }
    report.id_conflicts = conflicts.len() as u64;
    conflicts.extend(batch.dead_letters.iter().cloned());
    let (written, changes) =
        store_batch_effects(&tx, context, batch, &conflicts, &not_stored, processed_utc).await?;
    report.dead_letters_written = written;
    report.not_stored = not_stored;
    *sent = Some(changes.clone());
    tx.commit()
        .await
        .map_err(SinkError::statement("committing a batch"))?;
    log_dead_letters(&conflicts);
    Ok((report, changes))
}

/// Moves staged events into `events`: an id stored before with the same payload is skipped, one
/// stored with another payload (e.g. from another partition, which the worker-local
/// de-duplication cannot see) is a conflict and becomes a dead letter. Conflicts are looked for
/// after the insert, by position: the insert waits for any other transaction writing one of
/// its ids, so the check then sees that transaction's row, which a check before the insert, in
/// an older snapshot, would miss (its event skipped as a copy, neither stored nor
/// dead-lettered).
async fn merge_staged(
    tx: &Transaction<'_>,
    events: &[operators::record::EventRow],
    staged: u64,
) -> Result<Merged, SinkError> {
    let positions = |rows: Vec<tokio_postgres::Row>| -> HashSet<Position> {
        rows.iter().map(|row| (row.get(0), row.get(1))).collect()
    };
    let inserted = positions(
        tx.query(
            &format!(
                "INSERT INTO events ({EVENT_COLUMNS}) SELECT {EVENT_COLUMNS} \
                 FROM events_staging ON CONFLICT (id) DO NOTHING \
                 RETURNING source_partition, source_offset"
            ),
            &[],
        )
        .await
        .map_err(SinkError::statement("inserting staged events"))?,
    );
    let conflicting = positions(
        tx.query(
            "SELECT s.source_partition, s.source_offset FROM events_staging s \
             JOIN events e ON e.id = s.id WHERE e.payload_hash <> s.payload_hash",
            &[],
        )
        .await
        .map_err(SinkError::statement(
            "checking staged events for id conflicts",
        ))?,
    );
    let conflicts: Vec<DeadLetter> = events
        .iter()
        .filter(|event| conflicting.contains(&(event.partition, event.offset)))
        .map(id_conflict)
        .collect();
    let written = inserted.len() as u64;
    let skipped = staged - conflicts.len() as u64 - written;
    let not_stored = events
        .iter()
        .map(|event| (event.partition, event.offset))
        .filter(|position| !inserted.contains(position))
        .collect();
    Ok(Merged {
        written,
        skipped,
        conflicts,
        not_stored,
    })
}

/// What moving the staged events into `events` did.
struct Merged {
    written: u64,
    skipped: u64,
    conflicts: Vec<DeadLetter>,
    /// The positions of the batch's events that are not in `events` as the batch has them:
    /// copies skipped and conflicts.
    not_stored: HashSet<Position>,
}

/// The dead letter of an event whose id is stored with another payload.
fn id_conflict(event: &operators::record::EventRow) -> DeadLetter {
    event.clone().into_dead_letter(
        DeadLetterReason::DuplicateEventIdConflict,
        format!(
            "event id {} is already stored with another payload",
            event.event_id
        ),
    )
}

/// Whether `event`'s id, which an insert just found taken, is stored with another payload.
async fn stored_with_other_payload(
    tx: &Transaction<'_>,
    event: &operators::record::EventRow,
) -> Result<bool, SinkError> {
    let row = tx
        .query_opt(
            "SELECT payload_hash FROM events WHERE id = $1",
            &[&event.event_id],
        )
        .await
        .map_err(SinkError::statement(
            "reading a stored event's payload hash",
        ))?;
    // A row stored before payload hashes were kept has none: a copy, as `merge_staged` sees it.
    Ok(row
        .and_then(|row| row.get::<_, Option<String>>(0))
        .is_some_and(|stored| stored != event.payload_hash))
}

async fn commit_isolating(
    client: &mut Client,
    context: &CommitContext<'_>,
    batch: &CommitBatch,
    refused: Option<&RefusedIdentities>,
    sent: &mut Option<CorrectionChanges>,
) -> Result<(CommitReport, CorrectionChanges), SinkError> {
    let mut tx = client
        .transaction()
        .await
        .map_err(SinkError::statement("beginning a transaction"))?;
    let processed_utc = Utc::now();
    let insert = tx
        .prepare(&format!(
            "INSERT INTO events ({EVENT_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT (id) DO NOTHING"
        ))
        .await
        .map_err(SinkError::statement("preparing the single-row insert"))?;
    let mut report = CommitReport {
        processed_utc,
        ..CommitReport::default()
    };
    let mut dead_letters = batch.dead_letters.clone();
    let mut refused_identities = Vec::new();
    let mut not_stored = HashSet::new();
    for event in &batch.events {
        let savepoint = tx
            .savepoint("event_row")
            .await
            .map_err(SinkError::statement("creating a savepoint"))?;
        let payload = RawJsonb(&event.payload_json);
        let span_id = sampled_span_id(event);
        let outcome = savepoint
            .execute(
                &insert,
                &event_columns(event, &payload, &processed_utc, &span_id),
            )
            .await
            .map_err(SinkError::statement("inserting one event"));
        match outcome {
            Ok(inserted) => {
                savepoint
                    .commit()
                    .await
                    .map_err(SinkError::statement("releasing a savepoint"))?;
                report.events_written += inserted;
                if inserted == 0 {
                    not_stored.insert((event.partition, event.offset));
                    // The id is stored already: a copy of it is skipped, another payload under
                    // it is a conflict, as in `merge_staged`.
                    if stored_with_other_payload(&tx, event).await? {
                        dead_letters.push(id_conflict(event));
                        report.id_conflicts += 1;
                    } else {
                        report.duplicates_skipped += 1;
                    }
                }
            }
            Err(err) if err.is_data_error() => {
                savepoint
                    .rollback()
                    .await
                    .map_err(SinkError::statement("rolling back a savepoint"))?;
                let reason = match &err {
                    SinkError::Statement { source, .. } => source
                        .as_db_error()
                        .map(|db| format!("{}: {}", db.code().code(), db.message()))
                        .unwrap_or_else(|| source.to_string()),
                    other => other.to_string(),
                };
                refused_identities.push(SeenEvent::of(event));
                not_stored.insert((event.partition, event.offset));
                dead_letters.push(event.clone().into_dead_letter(
                    DeadLetterReason::DatabaseRejected,
                    format!("PostgreSQL rejected the event: {reason}"),
                ));
                report.rejected_by_database += 1;
            }
            Err(err) => return Err(err),
        }
    }
    let (written, changes) = store_batch_effects(
        &tx,
        context,
        batch,
        &dead_letters,
        &not_stored,
        processed_utc,
    )
    .await?;
    report.dead_letters_written = written;
    report.not_stored = not_stored;
    // Handed over before the commit, so that no replay of these dead letters (which needs them
    // committed) reaches de-duplication first. Should the commit fail, a retry of the batch
    // refuses the same rows again: a refusal depends on the row alone (`events` has no
    // constraint but its primary key, and a conflict on it is a skip, not a refusal).
    if let Some(refused) = refused {
        refused.push(refused_identities);
    }
    *sent = Some(changes.clone());
    tx.commit()
        .await
        .map_err(SinkError::statement("committing an isolated batch"))?;
    log_dead_letters(&dead_letters);
    Ok((report, changes))
}

/// One log line per committed dead letter, with its trace and identity (never its bytes).
fn log_dead_letters(dead_letters: &[DeadLetter]) {
    for dead in dead_letters {
        let identity = &dead.identity;
        tracing::info!(
            trace_id = dead.trace_id.as_deref().unwrap_or(""),
            tenant_id = identity.tenant_id.as_deref().unwrap_or(""),
            event_id = identity.event_id.map(|id| id.to_string()).unwrap_or_default(),
            idempotency_key = identity.idempotency_key.as_deref().unwrap_or(""),
            stream_key = identity.stream_key.as_deref().unwrap_or(""),
            source = identity.source.as_deref().unwrap_or(""),
            reason = dead.reason.code(),
            partition = dead.partition,
            offset = dead.offset,
            detail = %dead.message,
            "event dead-lettered"
        );
    }
}

fn printable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

async fn insert_dead_letters(
    tx: &Transaction<'_>,
    topic: &str,
    dead_letters: &[DeadLetter],
) -> Result<u64, SinkError> {
    if dead_letters.is_empty() {
        return Ok(0);
    }
    let reasons: Vec<&str> = dead_letters.iter().map(|d| d.reason.code()).collect();
    let messages: Vec<String> = dead_letters.iter().map(|d| printable(&d.message)).collect();
    let partitions: Vec<i32> = dead_letters.iter().map(|d| d.partition).collect();
    let offsets: Vec<i64> = dead_letters.iter().map(|d| d.offset).collect();
    let keys: Vec<Option<&[u8]>> = dead_letters.iter().map(|d| d.key.as_deref()).collect();
    let originals: Vec<&[u8]> = dead_letters.iter().map(|d| d.original.as_slice()).collect();
    let traces: Vec<Option<&str>> = dead_letters.iter().map(|d| d.trace_id.as_deref()).collect();
    let received: Vec<Option<DateTime<Utc>>> =
        dead_letters.iter().map(|d| d.received_utc).collect();
    let text = |field: fn(&EventIdentity) -> Option<&String>| -> Vec<Option<String>> {
        dead_letters
            .iter()
            .map(|d| field(&d.identity).map(|t| printable(t)))
            .collect()
    };
    let tenants = text(|i| i.tenant_id.as_ref());
    let types = text(|i| i.event_type.as_ref());
    let sources = text(|i| i.source.as_ref());
    let streams = text(|i| i.stream_key.as_ref());
    let idempotency_keys = text(|i| i.idempotency_key.as_ref());
    let event_ids: Vec<Option<uuid::Uuid>> =
        dead_letters.iter().map(|d| d.identity.event_id).collect();
    tx.execute(
        "INSERT INTO dead_letter (reason_code, message, source_topic, source_partition, \
         source_offset, record_key, original, trace_id, received_utc, tenant_id, event_id, \
         event_type, source, stream_key, idempotency_key) \
         SELECT r, m, $3, p, o, k, b, t, at, tn, ei, ty, so, sk, ik FROM UNNEST($1::text[], \
         $2::text[], $4::int4[], $5::int8[], $6::bytea[], $7::bytea[], $8::text[], \
         $9::timestamptz[], $10::text[], $11::uuid[], $12::text[], $13::text[], $14::text[], \
         $15::text[]) AS u(r, m, p, o, k, b, t, at, tn, ei, ty, so, sk, ik) \
         ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING",
        &[
            &reasons,
            &messages,
            &topic,
            &partitions,
            &offsets,
            &keys,
            &originals,
            &traces,
            &received,
            &tenants,
            &event_ids,
            &types,
            &sources,
            &streams,
            &idempotency_keys,
        ],
    )
    .await
    .map_err(SinkError::statement("inserting dead letters"))
}

/// Where a record was read: partition and offset. Unlike the event id, it tells apart two
/// copies of one event in a batch.
type Position = (i32, i64);

/// Per tenant and stream key (nested, so that a lookup borrows its keys).
type PerStream<V> = HashMap<String, HashMap<String, V>>;

fn per_stream<'m, V>(map: &'m PerStream<V>, tenant: &str, stream: &str) -> Option<&'m V> {
    map.get(tenant).and_then(|streams| streams.get(stream))
}

/// What the dataflow's stream states counted that PostgreSQL did not store, since this sink
/// started. The dataflow counts every event it accepted, before PostgreSQL's verdict: a copy of
/// an event stored before de-duplication's memory began (skipped), another payload under a
/// stored id (a conflict) or a row PostgreSQL refused. Its states are absolute, so the sink
/// keeps the difference for as long as the dataflow's state does, that is until the process
/// restarts and the dataflow starts again from the stored, corrected states.
#[derive(Debug, Clone, Default)]
struct StreamCorrections {
    /// Per stream, the events counted and not stored.
    uncounted: PerStream<i64>,
    /// Per stream, the position of the dataflow's latest event while it is one not stored.
    unstored_latest: PerStream<Position>,
}

/// What one batch changes in the corrections, applied once the batch has committed.
#[derive(Debug, Clone, Default)]
struct CorrectionChanges {
    uncounted: Vec<(String, String, i64)>,
    unstored_latest: Vec<(String, String, Option<Position>)>,
}

impl StreamCorrections {
    fn apply(&mut self, changes: CorrectionChanges) {
        for (tenant, stream, more) in changes.uncounted {
            *self
                .uncounted
                .entry(tenant)
                .or_default()
                .entry(stream)
                .or_default() += more;
        }
        for (tenant, stream, latest) in changes.unstored_latest {
            match latest {
                Some(position) => {
                    self.unstored_latest
                        .entry(tenant)
                        .or_default()
                        .insert(stream, position);
                }
                None => {
                    if let Some(streams) = self.unstored_latest.get_mut(&tenant) {
                        streams.remove(&stream);
                        if streams.is_empty() {
                            self.unstored_latest.remove(&tenant);
                        }
                    }
                }
            }
        }
    }
}

/// One `stream_state` row to write.
struct StreamRow<'a> {
    tenant: &'a str,
    stream: &'a str,
    count: i64,
    seen: DateTime<Utc>,
    event_type: &'a str,
    payload: &'a str,
    event_id: uuid::Uuid,
    partition: i32,
    offset: i64,
}

impl<'a> StreamRow<'a> {
    fn of_state(state: &'a StreamState, count: i64) -> Self {
        let latest = &state.latest;
        Self {
            tenant: &state.tenant_id,
            stream: &state.stream_key,
            count,
            seen: latest.timestamp_utc,
            event_type: &latest.event_type,
            payload: &latest.payload_json,
            event_id: latest.event_id,
            partition: latest.partition,
            offset: latest.offset,
        }
    }

    fn of_event(event: &'a EventRow, count: i64) -> Self {
        Self {
            tenant: &event.tenant_id,
            stream: &event.stream_key,
            count,
            seen: event.timestamp_utc,
            event_type: &event.event_type,
            payload: &event.payload_json,
            event_id: event.event_id,
            partition: event.partition,
            offset: event.offset,
        }
    }
}

/// Writes the latest state of each stream the batch changed (a later state of a stream in the
/// batch wins), less what PostgreSQL did not store (`not_stored`, by position, and
/// `corrections` from the batches before); returns what the batch changes in the corrections.
async fn store_stream_states(
    tx: &Transaction<'_>,
    batch: &CommitBatch,
    corrections: &StreamCorrections,
    not_stored: &HashSet<Position>,
) -> Result<CorrectionChanges, SinkError> {
    let mut changes = CorrectionChanges::default();
    if batch.stream_states.is_empty() {
        return Ok(changes);
    }
    let mut latest: BTreeMap<(&str, &str), &StreamState> = BTreeMap::new();
    for state in &batch.stream_states {
        latest.insert((&state.tenant_id, &state.stream_key), state);
    }
    // This batch's events counted and not stored, per stream.
    let mut batch_uncounted: HashMap<(&str, &str), i64> = HashMap::new();
    if !not_stored.is_empty() {
        for event in &batch.events {
            if not_stored.contains(&(event.partition, event.offset)) {
                *batch_uncounted
                    .entry((&event.tenant_id, &event.stream_key))
                    .or_default() += 1;
            }
        }
    }
    let mut plain = Vec::with_capacity(latest.len());
    let mut unstored_latest: HashSet<(&str, &str)> = HashSet::new();
    for (&(tenant, stream), &state) in &latest {
        let added = batch_uncounted.get(&(tenant, stream)).copied().unwrap_or(0);
        if added > 0 {
            changes
                .uncounted
                .push((tenant.to_owned(), stream.to_owned(), added));
        }
        let uncounted = per_stream(&corrections.uncounted, tenant, stream)
            .copied()
            .unwrap_or(0)
            + added;
        let position = (state.latest.partition, state.latest.offset);
        let known_unstored = per_stream(&corrections.unstored_latest, tenant, stream);
        if not_stored.contains(&position) || known_unstored == Some(&position) {
            unstored_latest.insert((tenant, stream));
            changes
                .unstored_latest
                .push((tenant.to_owned(), stream.to_owned(), Some(position)));
            continue;
        }
        if known_unstored.is_some() {
            changes
                .unstored_latest
                .push((tenant.to_owned(), stream.to_owned(), None));
        }
        plain.push(StreamRow::of_state(state, state.event_count - uncounted));
    }
    upsert_stream_states(tx, &plain, false).await?;
    if unstored_latest.is_empty() {
        return Ok(changes);
    }
    // The dataflow's latest of these streams is not in `events`: the latest stored event of
    // the batch takes its place where it is newer than the stored one, else only the count
    // changes.
    let mut newest_stored: HashMap<(&str, &str), &EventRow> = HashMap::new();
    for event in &batch.events {
        let stream = (event.tenant_id.as_str(), event.stream_key.as_str());
        if !unstored_latest.contains(&stream)
            || not_stored.contains(&(event.partition, event.offset))
        {
            continue;
        }
        let newer = |best: &&EventRow| {
            (event.timestamp_utc, event.offset) > (best.timestamp_utc, best.offset)
        };
        if newest_stored.get(&stream).is_none_or(newer) {
            newest_stored.insert(stream, event);
        }
    }
    let (mut guarded, mut counts_only) = (Vec::new(), Vec::new());
    for stream in unstored_latest {
        let state = latest[&stream];
        let uncounted = per_stream(&corrections.uncounted, stream.0, stream.1)
            .copied()
            .unwrap_or(0)
            + batch_uncounted.get(&stream).copied().unwrap_or(0);
        let count = state.event_count - uncounted;
        match newest_stored.get(&stream) {
            Some(event) => guarded.push(StreamRow::of_event(event, count)),
            None if count > 0 => counts_only.push(StreamRow::of_state(state, count)),
            None => {}
        }
    }
    upsert_stream_states(tx, &guarded, true).await?;
    if !counts_only.is_empty() {
        let tenants: Vec<&str> = counts_only.iter().map(|r| r.tenant).collect();
        let streams: Vec<&str> = counts_only.iter().map(|r| r.stream).collect();
        let counts: Vec<i64> = counts_only.iter().map(|r| r.count).collect();
        tx.execute(
            "UPDATE stream_state AS s SET event_count = u.c, updated_utc = now() \
             FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS u(t, k, c) \
             WHERE s.tenant_id = u.t AND s.stream_key = u.k",
            &[&tenants, &streams, &counts],
        )
        .await
        .map_err(SinkError::statement("correcting stream counts"))?;
    }
    Ok(changes)
}

/// Upserts `rows` into `stream_state`. `only_if_newer` keeps a stored latest event that is
/// newer than the row's (by event time, then offset), changing only the count.
async fn upsert_stream_states(
    tx: &Transaction<'_>,
    rows: &[StreamRow<'_>],
    only_if_newer: bool,
) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = rows.iter().map(|r| r.tenant).collect();
    let streams: Vec<&str> = rows.iter().map(|r| r.stream).collect();
    let seen: Vec<DateTime<Utc>> = rows.iter().map(|r| r.seen).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.event_type).collect();
    let payloads: Vec<RawJsonb<'_>> = rows.iter().map(|r| RawJsonb(r.payload)).collect();
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.event_id).collect();
    let counts: Vec<i64> = rows.iter().map(|r| r.count).collect();
    let partitions: Vec<i32> = rows.iter().map(|r| r.partition).collect();
    let offsets: Vec<i64> = rows.iter().map(|r| r.offset).collect();
    let last = |column: &str| {
        if only_if_newer {
            format!(
                "{column} = CASE WHEN (EXCLUDED.last_seen_utc, EXCLUDED.last_offset) > \
                 (s.last_seen_utc, s.last_offset) THEN EXCLUDED.{column} ELSE s.{column} END"
            )
        } else {
            format!("{column} = EXCLUDED.{column}")
        }
    };
    let assignments = [
        "last_seen_utc",
        "last_type",
        "last_payload_jsonb",
        "last_event_id",
        "source_partition",
        "last_offset",
    ]
    .map(last)
    .join(", ");
    tx.execute(
        &format!(
            "INSERT INTO stream_state AS s (tenant_id, stream_key, last_seen_utc, last_type, \
                last_payload_jsonb, last_event_id, event_count, source_partition, last_offset, \
                updated_utc) \
             SELECT t, k, s, y, p, i, c, sp, o, now() FROM UNNEST($1::text[], $2::text[], \
                $3::timestamptz[], $4::text[], $5::jsonb[], $6::uuid[], $7::int8[], $8::int4[], \
                $9::int8[]) AS u(t, k, s, y, p, i, c, sp, o) \
             ON CONFLICT (tenant_id, stream_key) DO UPDATE SET {assignments}, \
                event_count = EXCLUDED.event_count, updated_utc = EXCLUDED.updated_utc"
        ),
        &[
            &tenants,
            &streams,
            &seen,
            &types,
            &payloads,
            &ids,
            &counts,
            &partitions,
            &offsets,
        ],
    )
    .await
    .map_err(SinkError::statement("upserting stream states"))?;
    Ok(())
}

/// Adds the batch's deltas to their SLO windows, with, given `freshness` (the objective and the
/// batch's `processed_utc`), the freshness sample of each of its events PostgreSQL stored (not
/// those at a position in `not_stored`). A sum past `bigint` stays at its maximum rather than
/// failing the batch, and with it every commit after.
async fn store_slo_samples(
    tx: &Transaction<'_>,
    batch: &CommitBatch,
    freshness: Option<(FreshnessObjective, DateTime<Utc>)>,
    not_stored: &HashSet<Position>,
) -> Result<(), SinkError> {
    let outcomes = uncounted_outcomes(tx, &batch.gateway_outcomes).await?;
    let stored = batch
        .events
        .iter()
        .filter(|event| !not_stored.contains(&(event.partition, event.offset)));
    let freshness_samples = freshness
        .into_iter()
        .flat_map(|(objective, processed_utc)| {
            stored
                .clone()
                .map(move |event| objective.sample(event.received_utc, processed_utc))
        });
    let mut windows: std::collections::BTreeMap<DateTime<Utc>, [i64; 4]> = Default::default();
    for sample in outcomes.into_iter().chain(freshness_samples) {
        let sums = windows.entry(sample.window_start).or_default();
        let counts = sample.counts;
        for (sum, add) in sums.iter_mut().zip([
            counts.ingestion_good,
            counts.ingestion_total,
            counts.freshness_good,
            counts.freshness_total,
        ]) {
            *sum = sum.saturating_add(add);
        }
    }
    if windows.is_empty() {
        return Ok(());
    }
    let starts: Vec<DateTime<Utc>> = windows.keys().copied().collect();
    let column = |i: usize| windows.values().map(|sums| sums[i]).collect::<Vec<i64>>();
    let (ig, it, fg, ft) = (column(0), column(1), column(2), column(3));
    tx.execute(
        "INSERT INTO slo_samples AS s (window_start_utc, ingestion_good, ingestion_total, \
            freshness_good, freshness_total, updated_utc) \
         SELECT w, a, b, c, d, now() FROM UNNEST($1::timestamptz[], $2::int8[], $3::int8[], \
            $4::int8[], $5::int8[]) AS u(w, a, b, c, d) \
         ON CONFLICT (window_start_utc) DO UPDATE SET \
            ingestion_good = LEAST(s.ingestion_good::numeric + EXCLUDED.ingestion_good, 9223372036854775807)::int8, \
            ingestion_total = LEAST(s.ingestion_total::numeric + EXCLUDED.ingestion_total, 9223372036854775807)::int8, \
            freshness_good = LEAST(s.freshness_good::numeric + EXCLUDED.freshness_good, 9223372036854775807)::int8, \
            freshness_total = LEAST(s.freshness_total::numeric + EXCLUDED.freshness_total, 9223372036854775807)::int8, \
            updated_utc = EXCLUDED.updated_utc",
        &[&starts, &ig, &it, &fg, &ft],
    )
    .await
    .map_err(SinkError::statement("adding to SLO windows"))?;
    Ok(())
}

/// The samples of `outcomes` to add to their windows: each publication whose id this
/// transaction records in `gateway_publications` (so not one counted before), once, and every
/// outcome without an id. Also purges publications recorded more than seven days ago, skipping
/// rows another writer is purging.
async fn uncounted_outcomes(
    tx: &Transaction<'_>,
    outcomes: &[PublishedSample],
) -> Result<Vec<SloSample>, SinkError> {
    // In id order, as every writer inserts them: two writers reading copies of the same
    // publications lock their ids in one order, never in a cycle.
    let mut published: Vec<(Uuid, DateTime<Utc>)> = outcomes
        .iter()
        .filter_map(|o| Some((o.publication_id?, o.sample.window_start)))
        .collect();
    published.sort_unstable();
    let (ids, windows): (Vec<Uuid>, Vec<DateTime<Utc>>) = published.into_iter().unzip();
    let recorded: HashSet<Uuid> = if ids.is_empty() {
        HashSet::new()
    } else {
        let record = async {
            tx.query(
                "INSERT INTO gateway_publications (publication_id, window_start_utc) \
                 SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[]) \
                 ON CONFLICT (publication_id) DO NOTHING RETURNING publication_id",
                &[&ids, &windows],
            )
            .await
        };
        let purge = async {
            tx.execute(
                "DELETE FROM gateway_publications WHERE publication_id IN ( \
                    SELECT publication_id FROM gateway_publications \
                    WHERE recorded_utc < now() - interval '7 days' \
                    LIMIT 1000 FOR UPDATE SKIP LOCKED)",
                &[],
            )
            .await
        };
        let (recorded, purged) = tokio::join!(record, purge);
        let recorded = recorded.map_err(SinkError::statement("recording gateway publications"))?;
        purged.map_err(SinkError::statement("purging gateway publications"))?;
        recorded.iter().map(|row| row.get(0)).collect()
    };
    let mut counted = HashSet::new();
    Ok(outcomes
        .iter()
        .filter(|o| {
            o.publication_id
                .is_none_or(|id| recorded.contains(&id) && counted.insert(id))
        })
        .map(|o| o.sample)
        .collect())
}

/// The channel on which every commit announces how far each partition of the raw topic is now
/// durable, as `partition:next_offset` pairs separated by commas. PostgreSQL delivers the
/// notification only once the transaction commits, and in commit order: the live feed's cue.
pub const FEED_CHANNEL: &str = "sentinel_feed";

async fn notify_feed(
    tx: &Transaction<'_>,
    topic: &str,
    batch: &CommitBatch,
) -> Result<(), SinkError> {
    let positions: Vec<String> = batch
        .progress
        .iter()
        .filter(|p| p.topic == topic)
        .map(|p| format!("{}:{}", p.partition, p.next_offset))
        .collect();
    if positions.is_empty() {
        return Ok(());
    }
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&FEED_CHANNEL, &positions.join(",")],
    )
    .await
    .map_err(SinkError::statement(
        "announcing the commit to the live feed",
    ))?;
    Ok(())
}

async fn store_offsets(tx: &Transaction<'_>, batch: &CommitBatch) -> Result<(), SinkError> {
    if batch.progress.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = batch.progress.iter().map(|p| p.topic.as_str()).collect();
    let partitions: Vec<i32> = batch.progress.iter().map(|p| p.partition).collect();
    let next_offsets: Vec<i64> = batch.progress.iter().map(|p| p.next_offset).collect();
    tx.execute(
        "INSERT INTO source_offsets (topic, partition, next_offset, updated_utc) \
         SELECT t, p, o, now() FROM UNNEST($1::text[], $2::int4[], $3::int8[]) AS u(t, p, o) \
         ON CONFLICT (topic, partition) DO UPDATE \
         SET next_offset = EXCLUDED.next_offset, updated_utc = EXCLUDED.updated_utc",
        &[&topics, &partitions, &next_offsets],
    )
    .await
    .map_err(SinkError::statement("storing source offsets"))?;
    Ok(())
}

/// How the writer batches and retries.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Most records coalesced into one transaction from batches waiting in the queue.
    pub max_records_per_commit: usize,
    /// First retry delay after a transient failure.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            max_records_per_commit: 20_000,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Drains `batches` until the sender hangs up, coalescing queued batches into one transaction
/// and retrying transient failures forever. `on_commit` hears about every durable batch.
/// Returns an error only for a failure that retrying cannot fix.
pub async fn run_writer(
    mut sink: EventSink,
    mut batches: mpsc::Receiver<CommitBatch>,
    settings: WriterSettings,
    mut on_commit: impl FnMut(&CommitBatch, &CommitReport),
) -> Result<(), SinkError> {
    while let Some(mut batch) = batches.recv().await {
        while batch.record_count() < settings.max_records_per_commit {
            match batches.try_recv() {
                Ok(next) => batch.absorb(next),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let mut backoff = settings.initial_backoff;
        let mut attempt = 1u32;
        loop {
            let started = std::time::Instant::now();
            let started_at = std::time::SystemTime::now();
            match sink.commit(&batch).await {
                Ok(report) => {
                    commit_spans(&batch, started_at, std::time::SystemTime::now());
                    crate::telemetry::BatchCommitted {
                        batch: &batch,
                        report: &report,
                        processed_utc: report.processed_utc,
                        duration: started.elapsed(),
                    }
                    .emit();
                    on_commit(&batch, &report);
                    break;
                }
                Err(err) if err.is_retriable() => {
                    crate::telemetry::BatchRetried {
                        records: batch.record_count(),
                    }
                    .emit();
                    let delay = jittered(backoff);
                    tracing::warn!(
                        error = %error_chain(&err),
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        "batch commit failed, retrying"
                    );
                    tokio::time::sleep(delay).await;
                    backoff = (backoff * 2).min(settings.max_backoff);
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }
    Ok(())
}

/// Most links a batch span keeps (OpenTelemetry's default link limit).
const MAX_BATCH_LINKS: usize = 128;

/// The spans of a committed batch: per event a `db.write` and per dead letter a
/// `dead_letter.write`, each in its event's trace, and one `db.write.batch` span linked to them.
fn commit_spans(batch: &CommitBatch, start: std::time::SystemTime, end: std::time::SystemTime) {
    use opentelemetry::trace::SpanKind;
    use opentelemetry::KeyValue;
    use operators::spans::{event_attributes, Hop};
    if !operators::spans::enabled() {
        return;
    }
    let db = |operation: &'static str, table: &'static str| {
        [
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.operation.name", operation),
            KeyValue::new("db.collection.name", table),
        ]
    };
    let mut links = Vec::new();
    for event in &batch.events {
        let Some(parent) = event.trace_parent else {
            continue;
        };
        let own = Hop::new("db.write", SpanKind::Client, Some(parent), start, end)
            .with(db("COPY", "events"))
            .with(event_attributes(
                &event.tenant_id,
                &event.event_id.to_string(),
                &event.event_type,
                &event.source,
                &event.stream_key,
                event.idempotency_key.as_deref(),
            ))
            .record();
        if let Some(own) = own.filter(|_| links.len() < MAX_BATCH_LINKS) {
            links.push(own);
        }
    }
    for dead in &batch.dead_letters {
        let Some(parent) = dead.trace_parent else {
            continue;
        };
        let identity = &dead.identity;
        let own = Hop::new(
            "dead_letter.write",
            SpanKind::Client,
            Some(parent),
            start,
            end,
        )
        .with(db("INSERT", "dead_letter"))
        .with([KeyValue::new("dead_letter.reason", dead.reason.code())])
        .with(event_attributes(
            identity.tenant_id.as_deref().unwrap_or(""),
            &identity
                .event_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            identity.event_type.as_deref().unwrap_or(""),
            identity.source.as_deref().unwrap_or(""),
            identity.stream_key.as_deref().unwrap_or(""),
            identity.idempotency_key.as_deref(),
        ))
        .record();
        if let Some(own) = own.filter(|_| links.len() < MAX_BATCH_LINKS) {
            links.push(own);
        }
    }
    let mut batch_span = Hop::new("db.write.batch", SpanKind::Client, None, start, end)
        .with(db("COMMIT", "events"))
        .with([
            KeyValue::new("db.operation.batch.size", batch.record_count() as i64),
            KeyValue::new("messaging.batch.message_count", batch.record_count() as i64),
        ]);
    batch_span.links = links;
    batch_span.record();
}

/// A delay between half and all of `backoff` ("equal jitter"), so that workers do not retry in
/// lockstep.
fn jittered(backoff: Duration) -> Duration {
    let half = backoff / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::connect;
    use operators::record::PartitionProgress;
    use operators::slo_window::SloCounts;
    use operators::stream_state::StreamSummary;

    /// A fresh, migrated database on the PostgreSQL of `DATABASE_URL` (the one `infra/dev`
    /// starts), dropped by the test when it passes.
    async fn fresh_database(name: &str) -> String {
        let base = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/sentinel".to_owned());
        let server = &base[..base.rfind('/').expect("a database URL")];
        let database = format!("sinks_{name}_{}", std::process::id());
        let admin = connect(&format!("{server}/postgres")).await.unwrap();
        for statement in [
            format!("DROP DATABASE IF EXISTS {database}"),
            format!("CREATE DATABASE {database}"),
        ] {
            admin.batch_execute(&statement).await.unwrap();
        }
        let url = format!("{server}/{database}");
        crate::postgres::migrate(&mut connect(&url).await.unwrap())
            .await
            .unwrap();
        url
    }

    /// Drops the database of `url` once nothing uses it.
    async fn drop_database(url: &str) {
        let (server, database) = url.rsplit_once('/').expect("a database URL");
        let admin = connect(&format!("{server}/postgres")).await.unwrap();
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .await
            .unwrap();
    }

    /// The one bigint `sql` answers in the database of `url`.
    async fn single_value(url: &str, sql: &str) -> i64 {
        let db = connect(url).await.unwrap();
        db.query_one(sql, &[]).await.unwrap().get(0)
    }

    fn batch(next_offset: i64) -> CommitBatch {
        CommitBatch {
            progress: vec![PartitionProgress {
                topic: "raw".into(),
                partition: 0,
                next_offset,
            }],
            gateway_outcomes: vec![PublishedSample {
                publication_id: None,
                sample: SloSample {
                    window_start: "2026-12-03T10:00:00Z".parse().unwrap(),
                    counts: SloCounts {
                        ingestion_good: 1,
                        ingestion_total: 1,
                        freshness_good: 1,
                        freshness_total: 1,
                    },
                },
            }],
            ..CommitBatch::default()
        }
    }

    #[tokio::test]
    async fn a_batch_whose_commit_answer_was_lost_is_not_applied_again() {
        let url = fresh_database("lost_commit").await;
        let mut sink = EventSink::new(url.clone(), "raw");
        sink.commit(&batch(10)).await.unwrap();
        // The answer to COMMIT was lost with the connection: the writer retries the batch.
        sink.client = None;
        sink.maybe_committed = true;
        let retried = sink.commit(&batch(10)).await.unwrap();
        assert_eq!(retried.events_written, 0);
        // The next batch is applied as usual.
        sink.commit(&batch(20)).await.unwrap();
        assert_eq!(
            single_value(&url, "SELECT freshness_total FROM slo_samples").await,
            2,
            "the two batches, each counted once"
        );
        assert_eq!(
            single_value(&url, "SELECT next_offset FROM source_offsets").await,
            20
        );
        drop(sink);
        drop_database(&url).await;
    }

    #[tokio::test]
    async fn a_gateway_publication_read_twice_is_counted_once() {
        let url = fresh_database("publications").await;
        let mut sink = EventSink::new(url.clone(), "raw");
        let outcome = |publication_id: Option<u128>, good, total| PublishedSample {
            publication_id: publication_id.map(Uuid::from_u128),
            sample: SloSample {
                window_start: "2026-12-03T10:00:00Z".parse().unwrap(),
                counts: SloCounts {
                    ingestion_good: good,
                    ingestion_total: total,
                    ..SloCounts::default()
                },
            },
        };
        let with_outcomes = |next_offset, gateway_outcomes| CommitBatch {
            gateway_outcomes,
            ..batch(next_offset)
        };
        sink.commit(&with_outcomes(10, vec![outcome(Some(1), 3, 4)]))
            .await
            .unwrap();
        // The gateway sent publication 1 again (its acknowledgement was lost), twice, and the
        // copies landed in a later batch with a new publication and one of an older gateway.
        sink.commit(&with_outcomes(
            20,
            vec![
                outcome(Some(1), 3, 4),
                outcome(Some(2), 1, 1),
                outcome(Some(1), 3, 4),
                outcome(None, 2, 2),
            ],
        ))
        .await
        .unwrap();
        assert_eq!(
            single_value(&url, "SELECT ingestion_total FROM slo_samples").await,
            4 + 1 + 2
        );
        assert_eq!(
            single_value(&url, "SELECT ingestion_good FROM slo_samples").await,
            3 + 1 + 2
        );
        assert_eq!(
            single_value(&url, "SELECT count(*) FROM gateway_publications").await,
            2
        );
        drop(sink);
        drop_database(&url).await;
    }

    #[tokio::test]
    async fn a_batch_that_failed_before_its_commit_is_applied_on_retry() {
        let url = fresh_database("failed_commit").await;
        let mut sink = EventSink::new(url.clone(), "raw");
        sink.commit(&batch(10)).await.unwrap();
        // A failure that did not commit: the stored offsets are behind the batch.
        sink.client = None;
        sink.maybe_committed = true;
        sink.commit(&batch(20)).await.unwrap();
        assert_eq!(
            single_value(&url, "SELECT freshness_total FROM slo_samples").await,
            2
        );
        drop(sink);
        drop_database(&url).await;
    }
    #[tokio::test]
    async fn an_slo_window_near_the_bigint_limit_saturates_instead_of_failing_the_batch() {
        let url = fresh_database("slo_saturates").await;
        let mut sink = EventSink::new(url.clone(), "raw");
        sink.commit(&batch(10)).await.unwrap();
        connect(&url)
            .await
            .unwrap()
            .batch_execute("UPDATE slo_samples SET ingestion_total = 9223372036854775806")
            .await
            .unwrap();
        let mut overflowing = batch(20);
        overflowing.gateway_outcomes[0]
            .sample
            .counts
            .ingestion_total = 5;
        sink.commit(&overflowing).await.unwrap();
        assert_eq!(
            single_value(&url, "SELECT ingestion_total FROM slo_samples").await,
            i64::MAX
        );
        assert_eq!(
            single_value(&url, "SELECT freshness_total FROM slo_samples").await,
            2,
            "the other counts of the batch are added as usual"
        );
        assert_eq!(
            single_value(&url, "SELECT next_offset FROM source_offsets").await,
            20,
            "the batch committed"
        );
        drop(sink);
        drop_database(&url).await;
    }
    /// An event of stream `k` of tenant `acme` at `second` past a fixed time, at `offset`.
    fn event(id: u128, second: i64, offset: i64, key: Option<&str>) -> EventRow {
        let at = DateTime::from_timestamp(1_800_000_000 + second, 0).unwrap();
        EventRow {
            event_id: uuid::Uuid::from_u128(id),
            tenant_id: "acme".into(),
            source: "s".into(),
            event_type: "t".into(),
            stream_key: "k".into(),
            timestamp_utc: at,
            schema_version: 1,
            payload_json: format!(r#"{{"n":{id}}}"#),
            received_utc: at,
            trace_id: None,
            trace_parent: None,
            payload_hash: format!("{id:064x}"),
            idempotency_key: key.map(str::to_owned),
            partition: 0,
            offset,
            key: None,
            original: Vec::new(),
        }
    }

    /// A batch of `events` up to `offset`, with the state the dataflow reports for their stream.
    fn events_batch(events: Vec<EventRow>, count: i64, latest: &EventRow) -> CommitBatch {
        let next_offset = events.iter().map(|e| e.offset + 1).max().unwrap_or(0);
        CommitBatch {
            stream_states: vec![StreamState {
                tenant_id: "acme".into(),
                stream_key: "k".into(),
                event_count: count,
                latest: StreamSummary::of(latest).latest.unwrap(),
            }],
            events,
            ..batch(next_offset)
        }
    }

    /// The stored count and latest event id of stream `k`.
    async fn stream(url: &str) -> (i64, uuid::Uuid) {
        let db = connect(url).await.unwrap();
        let row = db
            .query_one(
                "SELECT event_count, last_event_id FROM stream_state WHERE stream_key = 'k'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }

    /// A fresh database and a sink that stored event 1 of stream `k`.
    async fn one_stored_event(name: &str) -> (String, EventSink) {
        let url = fresh_database(name).await;
        let mut sink = EventSink::new(url.clone(), "raw");
        let a = event(1, 10, 0, None);
        sink.commit(&events_batch(vec![a.clone()], 1, &a))
            .await
            .unwrap();
        assert_eq!(stream(&url).await, (1, uuid::Uuid::from_u128(1)));
        (url, sink)
    }

    #[tokio::test]
    async fn stream_state_counts_and_shows_only_what_postgresql_stored() {
        let (url, mut sink) = one_stored_event("stream_corrections").await;
        let id = uuid::Uuid::from_u128;

        // A copy of the stored event (de-duplication no longer remembered it) and a new one:
        // the dataflow counts both, PostgreSQL skips the copy.
        let b = event(2, 20, 2, None);
        sink.commit(&events_batch(vec![event(1, 10, 1, None), b.clone()], 3, &b))
            .await
            .unwrap();
        assert_eq!(stream(&url).await, (2, id(2)), "the copy is not counted");

        // The newest event yet, refused by PostgreSQL (a NUL in its key): the count and the
        // latest stay.
        let c = event(3, 40, 3, Some("k\0ey"));
        sink.commit(&events_batch(vec![c.clone()], 4, &c))
            .await
            .unwrap();
        assert_eq!(
            stream(&url).await,
            (2, id(2)),
            "the refused event is not shown"
        );

        // A stored event older than the refused one: the dataflow still reports the refused one
        // as latest, the stored one takes its place.
        let d = event(4, 30, 4, None);
        sink.commit(&events_batch(vec![d], 5, &c)).await.unwrap();
        assert_eq!(stream(&url).await, (3, id(4)));

        // A stored event older than the stored latest changes only the count.
        let e = event(5, 5, 5, None);
        sink.commit(&events_batch(vec![e], 6, &c)).await.unwrap();
        assert_eq!(stream(&url).await, (4, id(4)));
        assert_eq!(
            single_value(&url, "SELECT count(*) FROM events").await,
            4,
            "a, b, d and e"
        );
        drop(sink);
        drop_database(&url).await;
    }

    /// Commits `batch` and leaves `sink` as a lost COMMIT answer would: the batch durable, its
    /// stream corrections in doubt, the connection gone.
    async fn commit_losing_the_answer(sink: &mut EventSink, batch: &CommitBatch) {
        let mut sent = None;
        let corrections = std::mem::take(&mut sink.corrections);
        sink.commit_with(batch, &corrections, &mut sent)
            .await
            .unwrap();
        sink.corrections = corrections;
        sink.in_doubt = sent;
        sink.client = None;
        sink.maybe_committed = true;
    }

    #[tokio::test]
    async fn a_batch_whose_commit_answer_was_lost_still_corrects_its_streams() {
        let (url, mut sink) = one_stored_event("stream_corrections_in_doubt").await;
        let id = uuid::Uuid::from_u128;
        // A copy of `a` and a new event; the transaction commits, its answer is lost.
        let b = event(2, 20, 2, None);
        let copy_and_b = events_batch(vec![event(1, 10, 1, None), b.clone()], 3, &b);
        commit_losing_the_answer(&mut sink, &copy_and_b).await;
        // The retry finds the batch durable; the next batch still leaves the copy out.
        sink.commit(&copy_and_b).await.unwrap();
        let c = event(3, 30, 3, None);
        sink.commit(&events_batch(vec![c.clone()], 4, &c))
            .await
            .unwrap();
        assert_eq!(stream(&url).await, (3, id(3)), "a, b and c");
        drop(sink);
        drop_database(&url).await;
    }

    #[tokio::test]
    async fn an_id_written_with_two_payloads_in_one_batch_stores_one_and_dead_letters_the_other() {
        let url = fresh_database("id_twice_in_a_batch").await;
        let mut sink = EventSink::new(url.clone(), "raw");
        // The same id at offsets 0 and 1 with other payloads, as two partitions' workers would
        // write it at once: the insert keeps one, and the other is a conflict, not a copy.
        let first = event(1, 10, 0, None);
        let other = EventRow {
            payload_json: r#"{"n":"other"}"#.into(),
            payload_hash: format!("{:064x}", 2),
            offset: 1,
            ..first.clone()
        };
        let report = sink
            .commit(&events_batch(vec![first, other.clone()], 2, &other))
            .await
            .unwrap();
        assert_eq!(
            (
                report.events_written,
                report.duplicates_skipped,
                report.id_conflicts
            ),
            (1, 0, 1)
        );
        assert_eq!(report.not_stored.len(), 1);
        let (stored, dead) = (
            single_value(&url, "SELECT count(*) FROM events").await,
            single_value(
                &url,
                "SELECT count(*) FROM dead_letter \
                 WHERE reason_code = 'duplicate_event_id_conflict'",
            )
            .await,
        );
        assert_eq!(
            (stored, dead),
            (1, 1),
            "one stored, the other dead-lettered"
        );
        let dead_offset = single_value(&url, "SELECT source_offset FROM dead_letter").await;
        assert!(
            report.not_stored.contains(&(0, dead_offset)),
            "the dead letter is the event not stored"
        );
        drop(sink);
        drop_database(&url).await;
    }

    #[tokio::test]
    async fn a_lost_commit_answer_keeps_its_corrections_through_a_retry_that_cannot_connect() {
        let (url, mut sink) = one_stored_event("stream_corrections_in_doubt_unreachable").await;
        let id = uuid::Uuid::from_u128;
        let b = event(2, 20, 2, None);
        let copy_and_b = events_batch(vec![event(1, 10, 1, None), b.clone()], 3, &b);
        commit_losing_the_answer(&mut sink, &copy_and_b).await;
        // The first retry cannot reach PostgreSQL (it is still restarting, say): nothing is
        // sent, so whether the batch committed is still unknown.
        sink.url = "postgres://postgres@127.0.0.1:1/unreachable".to_owned();
        let unreachable = sink.commit(&copy_and_b).await;
        assert!(unreachable.is_err_and(|err| err.is_retriable()));
        assert!(sink.maybe_committed && sink.in_doubt.is_some());
        // The next retry finds the batch durable and applies what it left in doubt.
        sink.url = url.clone();
        sink.commit(&copy_and_b).await.unwrap();
        let c = event(3, 30, 3, None);
        sink.commit(&events_batch(vec![c.clone()], 4, &c))
            .await
            .unwrap();
        assert_eq!(
            stream(&url).await,
            (3, id(3)),
            "a, b and c; the copy not counted"
        );
        drop(sink);
        drop_database(&url).await;
    }

    #[tokio::test]
    async fn freshness_is_sampled_once_per_stored_event_at_its_processed_time() {
        let url = fresh_database("freshness_stored").await;
        let mut sink =
            EventSink::new(url.clone(), "raw").with_freshness_objective(FreshnessObjective {
                window: chrono::TimeDelta::minutes(1),
                threshold: chrono::TimeDelta::seconds(10),
            });
        let received = |ago: chrono::TimeDelta, event: EventRow| EventRow {
            received_utc: Utc::now() - ago,
            ..event
        };
        // The events and the count the dataflow's stream state reports, without the outcome
        // samples `batch` adds.
        let only_events = |events: Vec<EventRow>, count: i64| {
            let latest = events[events.len() - 1].clone();
            CommitBatch {
                gateway_outcomes: Vec::new(),
                ..events_batch(events, count, &latest)
            }
        };
        let fresh = received(chrono::TimeDelta::seconds(1), event(1, 10, 0, None));
        sink.commit(&only_events(vec![fresh.clone()], 1))
            .await
            .unwrap();
        // A copy of the stored event (past de-duplication's memory), an event received an hour
        // ago, and one PostgreSQL refuses (a NUL in its key): only the second is stored.
        let copy = EventRow {
            offset: 1,
            ..fresh.clone()
        };
        let late = received(chrono::TimeDelta::hours(1), event(2, 20, 2, None));
        let refused = received(
            chrono::TimeDelta::seconds(1),
            event(3, 30, 3, Some("k\0ey")),
        );
        let report = sink
            .commit(&only_events(vec![copy, late, refused], 4))
            .await
            .unwrap();
        assert_eq!((report.events_written, report.duplicates_skipped), (1, 1));
        assert_eq!(
            report.not_stored,
            [(0, 1), (0, 3)].into(),
            "the copy and the refused event, by position, for the metrics"
        );
        let sums = |column: &str| format!("SELECT sum({column})::int8 FROM slo_samples");
        assert_eq!(
            single_value(&url, &sums("freshness_total")).await,
            2,
            "the first event and the late one; the copy and the refused event are not counted"
        );
        assert_eq!(
            single_value(&url, &sums("freshness_good")).await,
            1,
            "the late event took an hour, past the 10 s threshold"
        );
        assert_eq!(
            single_value(&url, "SELECT count(*) FROM slo_samples").await,
            2,
            "each in the window of its receive time"
        );
        drop(sink);
        drop_database(&url).await;
    }

    #[tokio::test]
    async fn two_copies_of_one_event_in_a_batch_count_once() {
        let url = fresh_database("stream_corrections_copies").await;
        let mut sink = EventSink::new(url.clone(), "raw");
        // De-duplication lets a copy through once the first is past its retention; both in
        // one batch: the COPY fails on the second, the staged path stores the first.
        let a = event(1, 10, 0, None);
        let copy = event(1, 10, 1, None);
        sink.commit(&events_batch(vec![a, copy.clone()], 2, &copy))
            .await
            .unwrap();
        assert_eq!(stream(&url).await, (1, uuid::Uuid::from_u128(1)));
        assert_eq!(single_value(&url, "SELECT count(*) FROM events").await, 1);
        drop(sink);
        drop_database(&url).await;
    }
}
