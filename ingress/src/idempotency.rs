//! Idempotency claims in PostgreSQL (table `idempotency`), group-committed: every claim,
//! completion and release waiting in the queue goes to the database in one transaction of
//! prepared statements (one per kind) sent as one pipeline, so under load a request costs a
//! fraction of a round trip and of a WAL flush. A group of few claims first lingers a moment
//! (`SENTINEL_IDEMPOTENCY_LINGER_MS`) so that more share its transaction. Only claims are waited
//! for: a request hands its completion or release to the queue and answers, and the queue's
//! order guarantees that a later claim of the same key sees it.
//!
//! A claim is `in_flight` until the broker acknowledged the event, then `completed`. It carries
//! the answer to replay from the start, as typed columns (the answer does not depend on the
//! broker's), so completing it changes two small columns and, with the room the table's
//! fillfactor leaves, stays on the row's page without touching an index. A claim whose request
//! failed or crashed keeps its payload hash but not its lease, so a retry of the same payload
//! takes it over at once (or after the lease, if the process died) while a different payload is
//! still refused: one key never yields two events. Only a claim whose event the broker refused
//! for good (too large, say) is deleted, since nothing was written under its key.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};
use uuid::Uuid;

/// Idempotency settings.
#[derive(Debug, Clone)]
pub struct IdempotencySettings {
    /// PostgreSQL URL of the claim store.
    pub database_url: String,
    /// How long a claim is kept (and replayed), from when it was made; never less than its
    /// lease.
    pub retention: Duration,
    /// How long an in-flight claim is protected before a retry may take it over.
    pub lease: Duration,
    /// Most operations per statement.
    pub max_batch: usize,
    /// How long a small group (fewer than [`LINGER_BELOW_CLAIMS`] claims) waits for more
    /// operations before it is written; zero writes every group at once.
    pub linger: Duration,
    /// How often expired claims are purged.
    pub purge_interval: Duration,
}

/// The answer a claim stores and replays: what the first request's 202 said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredAnswer {
    /// The event's id.
    pub event_id: Uuid,
    /// When the gateway received the event.
    pub received_at: DateTime<Utc>,
    /// The trace the event travels in.
    pub trace_id: [u8; 16],
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// This request owns the key: write the event, then complete the claim.
    Claimed,
    /// The key completed earlier with the same payload: replay this answer.
    Replay(StoredAnswer),
    /// The key completed earlier with the same payload, but its stored answer cannot be read
    /// (a row damaged outside Sentinel).
    Unreadable,
    /// The key was used with a different payload.
    Mismatch,
    /// The same payload is being written by another request right now.
    InFlight {
        /// When the other request's lease ends.
        lease_until: DateTime<Utc>,
    },
}

/// The claim store cannot be reached (retriable: answer 503).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the idempotency store is unavailable: {0}")]
pub struct StoreUnavailable(pub String);

impl StoreUnavailable {
    /// Always retriable.
    pub fn is_retriable(&self) -> bool {
        true
    }
}

/// Identity of one claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimKey {
    /// Tenant (from the token).
    pub tenant_id: String,
    /// The client's `Idempotency-Key`.
    pub key: String,
}

type Reply<T> = oneshot::Sender<Result<T, StoreUnavailable>>;

enum Op {
    Claim {
        key: ClaimKey,
        payload_hash: String,
        answer: StoredAnswer,
        reply: Reply<ClaimOutcome>,
    },
    Complete {
        key: ClaimKey,
        payload_hash: String,
        received_at: DateTime<Utc>,
    },
    Release {
        key: ClaimKey,
        payload_hash: String,
        received_at: DateTime<Utc>,
    },
    Forget {
        key: ClaimKey,
        payload_hash: String,
        received_at: DateTime<Utc>,
    },
    /// Answered once everything queued before it was written (or failed).
    Flush { reply: oneshot::Sender<()> },
}

impl Op {
    fn key(&self) -> Option<&ClaimKey> {
        match self {
            Op::Claim { key, .. }
            | Op::Complete { key, .. }
            | Op::Release { key, .. }
            | Op::Forget { key, .. } => Some(key),
            Op::Flush { .. } => None,
        }
    }
}

/// Handle to the claim store; cheap to clone.
#[derive(Clone)]
pub struct ClaimStore {
    ops: mpsc::Sender<Op>,
    deadlocks: Arc<AtomicU64>,
}

impl ClaimStore {
    /// Starts the batching task and the purge task on the current runtime.
    pub fn start(settings: IdempotencySettings) -> Self {
        let (ops, queue) = mpsc::channel(16_384);
        let deadlocks = Arc::new(AtomicU64::new(0));
        tokio::spawn(run_batches(settings.clone(), queue, Arc::clone(&deadlocks)));
        tokio::spawn(run_purge(settings));
        Self { ops, deadlocks }
    }

    /// How many of this store's groups PostgreSQL aborted to break a deadlock (also counted,
    /// over every store of the process, in `idempotency_deadlocks_total`).
    pub fn deadlocks(&self) -> u64 {
        self.deadlocks.load(Ordering::Relaxed)
    }

    /// Claims `key` for a payload, with the answer a replay gives once the claim is completed;
    /// see [`ClaimOutcome`].
    pub async fn claim(
        &self,
        key: ClaimKey,
        payload_hash: String,
        answer: StoredAnswer,
    ) -> Result<ClaimOutcome, StoreUnavailable> {
        let started = std::time::Instant::now();
        let (reply, outcome) = oneshot::channel();
        let op = Op::Claim {
            key,
            payload_hash,
            answer,
            reply,
        };
        self.enqueue(op).await?;
        let outcome = outcome
            .await
            .map_err(|_| StoreUnavailable("the claim task dropped the request".into()))?;
        crate::telemetry::ClaimAnswered {
            duration: started.elapsed(),
        }
        .emit();
        outcome
    }

    /// Marks this request's claim completed: from now on its answer is replayed. The claim is
    /// told apart by its answer's receive time, so a request that outlived its lease does not
    /// complete the claim a later request took over. Returns once the
    /// completion is queued: it is written with the next group, before any claim queued after
    /// it. If it is never written (the store fails), the claim stays in flight and a retry after
    /// its lease re-sends the same event, which the dataflow's de-duplication absorbs.
    pub async fn complete(
        &self,
        key: ClaimKey,
        payload_hash: String,
        received_at: DateTime<Utc>,
    ) -> Result<(), StoreUnavailable> {
        self.enqueue(Op::Complete {
            key,
            payload_hash,
            received_at,
        })
        .await
    }

    /// Gives up this request's claim (told apart by its answer's receive time, like
    /// [`ClaimStore::complete`]) whose event was not acknowledged: its lease ends now, so a retry
    /// of the same payload takes it over, and a different payload is still refused. Returns once
    /// queued, like [`ClaimStore::complete`]; if never written, the claim frees itself after
    /// its lease.
    pub async fn release(
        &self,
        key: ClaimKey,
        payload_hash: String,
        received_at: DateTime<Utc>,
    ) -> Result<(), StoreUnavailable> {
        self.enqueue(Op::Release {
            key,
            payload_hash,
            received_at,
        })
        .await
    }

    /// Deletes this request's claim (told apart like [`ClaimStore::complete`]) whose event the
    /// broker refused for good: nothing was written under the key, so any payload may take it,
    /// a corrected one included. Returns once queued; if never written, the claim frees itself
    /// for the same payload after its lease, like a released one.
    pub async fn forget(
        &self,
        key: ClaimKey,
        payload_hash: String,
        received_at: DateTime<Utc>,
    ) -> Result<(), StoreUnavailable> {
        self.enqueue(Op::Forget {
            key,
            payload_hash,
            received_at,
        })
        .await
    }

    /// Waits until every operation queued before this call was written (or failed for good):
    /// at shutdown, so that the completions of the last requests are not lost with the process.
    pub async fn flush(&self) {
        let (reply, written) = oneshot::channel();
        if self.enqueue(Op::Flush { reply }).await.is_ok() {
            let _ = written.await;
        }
    }

    async fn enqueue(&self, op: Op) -> Result<(), StoreUnavailable> {
        self.ops
            .send(op)
            .await
            .map_err(|_| StoreUnavailable("the claim task stopped".into()))
    }
}

/// A group with fewer claims than this waits [`IdempotencySettings::linger`] for more: below
/// it, the transaction's fixed cost (its statements, its commit and WAL flush) is a large share
/// of each claim's.
pub const LINGER_BELOW_CLAIMS: usize = 32;

/// The `application_name` of the claim store's connections.
pub const CLAIMS_APPLICATION: &str = "sentinel-claims";

async fn connect(url: &str) -> Result<Client, StoreUnavailable> {
    let mut config: Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreUnavailable(e.to_string()))?;
    if config.get_application_name().is_none() {
        config.application_name(CLAIMS_APPLICATION);
    }
    let connecting = config.connect(NoTls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(3), connecting)
        .await
        .map_err(|_| StoreUnavailable("connecting timed out".into()))?
        .map_err(|e| StoreUnavailable(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "idempotency connection ended");
        }
    });
    Ok(client)
}

fn unavailable(err: tokio_postgres::Error) -> StoreUnavailable {
    StoreUnavailable(
        err.as_db_error()
            .map(|db| db.message().to_owned())
            .unwrap_or_else(|| err.to_string()),
    )
}

/// The store's statements, prepared once per connection.
struct Prepared {
    client: Client,
    claim: Statement,
    held: Statement,
    complete: Statement,
    release: Statement,
    forget: Statement,
}

impl Prepared {
    async fn connect(url: &str) -> Result<Self, StoreUnavailable> {
        let client = connect(url).await?;
        // Every statement here reaches its rows through the primary key. Planned once, for any
        // table size: a plan chosen while the table was small (or never analysed) must not scan
        // or hash all of it once it has grown, and re-planning each group costs more than the
        // group's own work.
        client
            .batch_execute(
                "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; \
                 SET enable_hashjoin = off; SET enable_mergejoin = off",
            )
            .await
            .map_err(unavailable)?;
        let (claim, held, complete, release, forget) = tokio::try_join!(
            client.prepare(CLAIM_SQL),
            client.prepare(HELD_SQL),
            client.prepare(COMPLETE_SQL),
            client.prepare(RELEASE_SQL),
            client.prepare(FORGET_SQL),
        )
        .map_err(unavailable)?;
        Ok(Self {
            client,
            claim,
            held,
            complete,
            release,
            forget,
        })
    }
}

async fn run_batches(
    settings: IdempotencySettings,
    mut queue: mpsc::Receiver<Op>,
    deadlocks: Arc<AtomicU64>,
) {
    let mut store: Option<Prepared> = None;
    let mut deferred: Vec<Op> = Vec::new();
    loop {
        let mut ops = std::mem::take(&mut deferred);
        if ops.is_empty() {
            match queue.recv().await {
                Some(op) => ops.push(op),
                None => return,
            }
        }
        drain(&mut queue, &mut ops, settings.max_batch);
        let room = ops.len() < settings.max_batch;
        let flushing = ops.iter().any(|op| matches!(op, Op::Flush { .. }));
        if room
            && !flushing
            && !settings.linger.is_zero()
            && claim_count(&ops) < LINGER_BELOW_CLAIMS
        {
            tokio::time::sleep(settings.linger).await;
            drain(&mut queue, &mut ops, settings.max_batch);
        }
        if store.as_ref().is_none_or(|s| s.client.is_closed()) {
            match Prepared::connect(&settings.database_url).await {
                Ok(connected) => store = Some(connected),
                Err(err) => {
                    fail_all(ops, &err);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let db = store.as_ref().expect("connected above");
        let mut group = Group::default();
        let mut claimed_keys = HashSet::new();
        let mut flushes = Vec::new();
        for op in ops {
            match op {
                Op::Flush { reply } => flushes.push(reply),
                // One claim per key and group: one INSERT … ON CONFLICT cannot touch a row twice.
                Op::Claim { ref key, .. } if !claimed_keys.insert(key.clone()) => deferred.push(op),
                Op::Claim { .. } => group.claims.push(op),
                Op::Complete { .. } => group.completes.push(op),
                Op::Release { .. } => group.releases.push(op),
                Op::Forget { .. } => group.forgets.push(op),
            }
        }
        group.sort_by_key();
        group.emit_counts();
        match write_group_retrying_deadlocks(db, &settings, &group, &deadlocks).await {
            Ok(won) => {
                let held = answer_won(group.claims, won);
                if !held.is_empty() {
                    match answer_held(db, held).await {
                        Ok(retry) => deferred.extend(retry),
                        Err(()) => store = None,
                    }
                }
            }
            Err(err) => {
                let err = unavailable(err);
                let Group {
                    claims,
                    completes,
                    releases,
                    forgets,
                } = group;
                fail_all(
                    claims
                        .into_iter()
                        .chain(completes)
                        .chain(releases)
                        .chain(forgets)
                        .collect(),
                    &err,
                );
                store = None;
            }
        }
        // Written (or failed for good); claims deferred to the next group go before a flush.
        if deferred.is_empty() {
            for reply in flushes {
                let _ = reply.send(());
            }
        } else {
            deferred.extend(flushes.into_iter().map(|reply| Op::Flush { reply }));
        }
    }
}

/// Moves what is queued into `ops`, up to `max` operations.
fn drain(queue: &mut mpsc::Receiver<Op>, ops: &mut Vec<Op>, max: usize) {
    while ops.len() < max {
        match queue.try_recv() {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
}

fn claim_count(ops: &[Op]) -> usize {
    ops.iter()
        .filter(|op| matches!(op, Op::Claim { .. }))
        .count()
}

/// One group's operations, by kind.
#[derive(Default)]
struct Group {
    claims: Vec<Op>,
    completes: Vec<Op>,
    releases: Vec<Op>,
    forgets: Vec<Op>,
}

impl Group {
    /// Orders each kind's operations by key, so that two groups (of two gateway instances)
    /// lock the rows a statement of theirs shares in the same order and never wait on each
    /// other in a cycle within one statement.
    fn sort_by_key(&mut self) {
        for ops in [
            &mut self.completes,
            &mut self.releases,
            &mut self.forgets,
            &mut self.claims,
        ] {
            ops.sort_by(|a, b| a.key().cmp(&b.key()));
        }
    }

    fn emit_counts(&self) {
        for (kind, operations) in [
            ("complete", self.completes.len()),
            ("release", self.releases.len()),
            ("forget", self.forgets.len()),
            ("claim", self.claims.len()),
        ] {
            if operations > 0 {
                crate::telemetry::ClaimStatementRun { kind, operations }.emit();
            }
        }
    }
}

/// How many times a group that PostgreSQL chose as a deadlock's victim is written again before
/// its claims are answered 503.
const DEADLOCK_ATTEMPTS: usize = 3;

/// Writes one group like [`write_group`], again when PostgreSQL broke a deadlock by aborting it.
/// Sorted statements cannot deadlock with each other, but the statements of one group run in
/// kind order (completions before claims), so a group completing key A and claiming key B can
/// still meet, on another instance, a group completing B and claiming A. The aborted
/// transaction left nothing behind; written again, it waits for the other one's locks, which
/// now go on to their commit.
async fn write_group_retrying_deadlocks(
    db: &Prepared,
    settings: &IdempotencySettings,
    group: &Group,
    deadlocks: &AtomicU64,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let mut attempt = 1;
    loop {
        match write_group(db, settings, group).await {
            Err(err) if err.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {
                deadlocks.fetch_add(1, Ordering::Relaxed);
                let retried = attempt < DEADLOCK_ATTEMPTS;
                crate::telemetry::ClaimGroupDeadlocked { attempt, retried }.emit();
                if !retried {
                    return Err(err);
                }
                attempt += 1;
            }
            written => return written,
        }
    }
}

/// Writes one group in one transaction: completions, releases and forgets first, so that a claim
/// of the same key sees them, then the claims. Every statement is sent before the first answer comes
/// back (one round trip, one WAL flush). Returns the rows of the keys claimed.
async fn write_group(
    db: &Prepared,
    settings: &IdempotencySettings,
    group: &Group,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let to_complete = key_columns(&group.completes);
    let to_release = key_columns(&group.releases);
    let to_forget = key_columns(&group.forgets);
    let claim_columns = claim_columns(&group.claims);
    let lease_ms = settings.lease.as_millis() as f64;
    let retention_ms = settings.retention.as_millis() as f64;

    let client = &db.client;
    let begin = client.batch_execute("BEGIN");
    let completes = execute_keyed(client, &db.complete, &to_complete);
    let releases = execute_keyed(client, &db.release, &to_release);
    let forgets = execute_keyed(client, &db.forget, &to_forget);
    let claims = async {
        if group.claims.is_empty() {
            return Ok(Vec::new());
        }
        client
            .query(
                &db.claim,
                &[
                    &claim_columns.tenants,
                    &claim_columns.keys,
                    &claim_columns.hashes,
                    &claim_columns.event_ids,
                    &claim_columns.received,
                    &claim_columns.trace_ids,
                    &lease_ms,
                    &retention_ms,
                ],
            )
            .await
    };
    let commit = client.batch_execute("COMMIT");
    // Polled in this order, so sent in this order, on one connection.
    let (began, completed, released, forgot, claimed, committed) =
        tokio::join!(begin, completes, releases, forgets, claims, commit);
    began?;
    completed?;
    released?;
    forgot?;
    let rows = claimed?;
    committed?;
    Ok(rows)
}

/// Runs a completion, release or forget statement over `columns`; nothing when there are none.
async fn execute_keyed(
    client: &Client,
    statement: &Statement,
    columns: &KeyColumns<'_>,
) -> Result<u64, tokio_postgres::Error> {
    if columns.tenants.is_empty() {
        return Ok(0);
    }
    client
        .execute(
            statement,
            &[
                &columns.tenants,
                &columns.keys,
                &columns.hashes,
                &columns.received,
            ],
        )
        .await
}

/// Answers every claim of `ops` with `err`; completions, releases and forgets among them are
/// dropped, and said so: their claims free themselves after their lease.
fn fail_all(ops: Vec<Op>, err: &StoreUnavailable) {
    let mut dropped = 0;
    for op in ops {
        match op {
            Op::Claim { reply, .. } => {
                let _ = reply.send(Err(err.clone()));
            }
            Op::Flush { reply } => {
                let _ = reply.send(());
            }
            Op::Complete { .. } | Op::Release { .. } | Op::Forget { .. } => dropped += 1,
        }
    }
    if dropped > 0 {
        tracing::warn!(error = %err, dropped,
            "idempotency claims not completed, released or forgotten; they free themselves after their lease");
    }
}

/// Claims every key it can (new, expired, or in flight past its lease with the same payload)
/// and returns the keys it claimed. A claim expires after the retention or its lease, whichever
/// ends later: a retention shorter than the lease must not let another payload take the key
/// while the first request may still be writing its event.
const CLAIM_SQL: &str = "INSERT INTO idempotency AS cur (tenant_id, idempotency_key, \
        payload_hash, event_id, received_utc, trace_id, state, lease_until_utc, expires_utc) \
     SELECT tenant_id, idempotency_key, payload_hash, event_id, received_utc, trace_id, \
        'in_flight', \
        clock_timestamp() + make_interval(secs => $7::float8 / 1000), \
        clock_timestamp() + make_interval(secs => GREATEST($7::float8, $8::float8) / 1000) \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], $5::timestamptz[], \
                 $6::bytea[]) \
        AS i(tenant_id, idempotency_key, payload_hash, event_id, received_utc, trace_id) \
     ON CONFLICT (tenant_id, idempotency_key) DO UPDATE SET \
        payload_hash = EXCLUDED.payload_hash, event_id = EXCLUDED.event_id, \
        received_utc = EXCLUDED.received_utc, trace_id = EXCLUDED.trace_id, response = NULL, \
        state = 'in_flight', claimed_utc = now(), completed_utc = NULL, \
        lease_until_utc = EXCLUDED.lease_until_utc, expires_utc = EXCLUDED.expires_utc \
     WHERE cur.expires_utc < clock_timestamp() \
        OR (cur.state = 'in_flight' AND cur.lease_until_utc < clock_timestamp() \
            AND cur.payload_hash = EXCLUDED.payload_hash) \
     RETURNING tenant_id, idempotency_key";

/// The stored claims of keys that could not be claimed. A claim made before the answer had
/// typed columns (migration V11) is read from its `response` document.
const HELD_SQL: &str = "SELECT cur.tenant_id, cur.idempotency_key, cur.payload_hash, \
        cur.state, cur.lease_until_utc, cur.event_id, \
        COALESCE(cur.received_utc, (cur.response->>'receivedAtUtc')::timestamptz), \
        COALESCE(cur.trace_id, decode(cur.response->>'traceId', 'hex')) \
     FROM UNNEST($1::text[], $2::text[]) AS i(tenant_id, idempotency_key) \
     JOIN idempotency cur ON cur.tenant_id = i.tenant_id \
                         AND cur.idempotency_key = i.idempotency_key";

/// Completes the claims of the requests that made them: a claim taken over after its lease
/// carries the receive time of the request that took it, so the request that lost it matches
/// nothing.
const COMPLETE_SQL: &str = "UPDATE idempotency AS cur SET state = 'completed', \
        completed_utc = now() \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[]) \
        AS u(tenant_id, idempotency_key, payload_hash, received_utc) \
     WHERE cur.tenant_id = u.tenant_id AND cur.idempotency_key = u.idempotency_key \
       AND cur.payload_hash = u.payload_hash AND cur.received_utc = u.received_utc";

/// Ends the lease of the claims of the requests that made them, matched like [`COMPLETE_SQL`].
const RELEASE_SQL: &str = "UPDATE idempotency AS cur \
        SET lease_until_utc = clock_timestamp() - interval '1 ms' \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[]) \
        AS u(tenant_id, idempotency_key, payload_hash, received_utc) \
     WHERE cur.tenant_id = u.tenant_id AND cur.idempotency_key = u.idempotency_key \
       AND cur.payload_hash = u.payload_hash AND cur.received_utc = u.received_utc \
       AND cur.state = 'in_flight'";

/// Deletes the claims of the requests that made them (matched like [`COMPLETE_SQL`]) whose events
/// the broker refused for good.
const FORGET_SQL: &str = "DELETE FROM idempotency AS cur \
     USING UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[]) \
        AS u(tenant_id, idempotency_key, payload_hash, received_utc) \
     WHERE cur.tenant_id = u.tenant_id AND cur.idempotency_key = u.idempotency_key \
       AND cur.payload_hash = u.payload_hash AND cur.received_utc = u.received_utc \
       AND cur.state = 'in_flight'";

/// The claims of a group as the columns the claim statement unnests.
#[derive(Default)]
struct ClaimColumns<'a> {
    tenants: Vec<&'a str>,
    keys: Vec<&'a str>,
    hashes: Vec<&'a str>,
    event_ids: Vec<Uuid>,
    received: Vec<DateTime<Utc>>,
    trace_ids: Vec<&'a [u8]>,
}

fn claim_columns(claims: &[Op]) -> ClaimColumns<'_> {
    let mut columns = ClaimColumns::default();
    for op in claims {
        if let Op::Claim {
            key,
            payload_hash,
            answer,
            ..
        } = op
        {
            columns.tenants.push(key.tenant_id.as_str());
            columns.keys.push(key.key.as_str());
            columns.hashes.push(payload_hash.as_str());
            columns.event_ids.push(answer.event_id);
            columns.received.push(answer.received_at);
            columns.trace_ids.push(&answer.trace_id);
        }
    }
    columns
}

/// Answers the claims that won their key; returns the others.
fn answer_won(claims: Vec<Op>, won: Vec<Row>) -> Vec<Op> {
    let won: HashSet<(&str, &str)> = won.iter().map(|row| (row.get(0), row.get(1))).collect();
    let mut held = Vec::new();
    for op in claims {
        match op {
            Op::Claim { key, reply, .. }
                if won.contains(&(key.tenant_id.as_str(), key.key.as_str())) =>
            {
                let _ = reply.send(Ok(ClaimOutcome::Claimed));
            }
            other => held.push(other),
        }
    }
    held
}

/// Answers the claims of keys held by an earlier claim from its stored row; returns the claims
/// to retry (the row is gone: purged since). `Err` when the connection failed.
async fn answer_held(db: &Prepared, held: Vec<Op>) -> Result<Vec<Op>, ()> {
    let columns = claim_columns(&held);
    let rows = match db
        .client
        .query(&db.held, &[&columns.tenants, &columns.keys])
        .await
    {
        Ok(rows) => rows,
        Err(err) => {
            fail_all(held, &unavailable(err));
            return Err(());
        }
    };
    let stored: HashMap<(&str, &str), &Row> = rows
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row))
        .collect();
    let mut retry = Vec::new();
    for op in held {
        let Op::Claim {
            key,
            payload_hash,
            answer,
            reply,
        } = op
        else {
            continue;
        };
        let Some(row) = stored.get(&(key.tenant_id.as_str(), key.key.as_str())) else {
            retry.push(Op::Claim {
                key,
                payload_hash,
                answer,
                reply,
            });
            continue;
        };
        let outcome = if row.get::<_, &str>(2) != payload_hash {
            ClaimOutcome::Mismatch
        } else if row.get::<_, &str>(3) == "completed" {
            stored_answer(row).map_or(ClaimOutcome::Unreadable, ClaimOutcome::Replay)
        } else {
            ClaimOutcome::InFlight {
                lease_until: row.get(4),
            }
        };
        let _ = reply.send(Ok(outcome));
    }
    Ok(retry)
}

/// The answer a completed claim's row (of [`HELD_SQL`]) stores; `None` when its columns are
/// missing or malformed.
fn stored_answer(row: &Row) -> Option<StoredAnswer> {
    let event_id = row.try_get::<_, Uuid>(5).ok()?;
    let received_at = row.try_get::<_, DateTime<Utc>>(6).ok()?;
    let trace_id = row.try_get::<_, &[u8]>(7).ok()?.try_into().ok()?;
    Some(StoredAnswer {
        event_id,
        received_at,
        trace_id,
    })
}

/// The completions or releases of a group as the columns their statement unnests.
#[derive(Default)]
struct KeyColumns<'a> {
    tenants: Vec<&'a str>,
    keys: Vec<&'a str>,
    hashes: Vec<&'a str>,
    received: Vec<DateTime<Utc>>,
}

fn key_columns(ops: &[Op]) -> KeyColumns<'_> {
    let mut columns = KeyColumns::default();
    for op in ops {
        if let Op::Complete {
            key,
            payload_hash,
            received_at,
        }
        | Op::Release {
            key,
            payload_hash,
            received_at,
        }
        | Op::Forget {
            key,
            payload_hash,
            received_at,
        } = op
        {
            columns.tenants.push(key.tenant_id.as_str());
            columns.keys.push(key.key.as_str());
            columns.hashes.push(payload_hash.as_str());
            columns.received.push(*received_at);
        }
    }
    columns
}

/// Most expired claims one purge statement deletes: a statement this size is short, so it holds
/// its locks and its share of the WAL briefly, while the claims keep being written.
pub const PURGE_BATCH: i64 = 10_000;

/// Deletes every claim past its retention, [`PURGE_BATCH`] at a time (each batch a statement and
/// transaction of its own), until a batch finds fewer: one purge clears whatever expired since
/// the last, at any rate of claims. Returns how many claims it deleted.
pub async fn purge_expired(client: &Client) -> Result<u64, StoreUnavailable> {
    let mut purged = 0;
    loop {
        let deleted = client
            .execute(
                // The outer condition again: a claim taken over since the inner select found
                // it expired has a new version, which must stay.
                "DELETE FROM idempotency WHERE ctid = ANY (ARRAY( \
                    SELECT ctid FROM idempotency WHERE expires_utc < now() LIMIT $1)) \
                 AND expires_utc < now()",
                &[&PURGE_BATCH],
            )
            .await
            .map_err(unavailable)?;
        purged += deleted;
        if deleted < PURGE_BATCH as u64 {
            return Ok(purged);
        }
    }
}

async fn run_purge(settings: IdempotencySettings) {
    let mut interval = tokio::time::interval(settings.purge_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let purged = async {
            let client = connect(&settings.database_url).await?;
            purge_expired(&client).await
        }
        .await;
        match purged {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "expired idempotency claims purged"),
            Err(err) => tracing::warn!(error = %err, "purging idempotency claims failed"),
        }
    }
}
