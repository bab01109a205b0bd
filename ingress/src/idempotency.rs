//! Idempotency claims in PostgreSQL (table `idempotency`), group-committed: every claim,
//! completion and release waiting in the queue goes to the database in one statement per kind,
//! so under load a request costs a fraction of a round trip.
//!
//! A claim is `in_flight` until the broker acknowledged the event, then `completed` with the
//! response to replay. A claim whose request failed or crashed keeps its payload hash but not its
//! lease, so a retry of the same payload takes it over at once (or after the lease, if the
//! process died) while a different payload is still refused: one key never yields two events.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// Idempotency settings.
#[derive(Debug, Clone)]
pub struct IdempotencySettings {
    /// PostgreSQL URL of the claim store.
    pub database_url: String,
    /// How long a completed claim is kept (and replayed).
    pub retention: Duration,
    /// How long an in-flight claim is protected before a retry may take it over.
    pub lease: Duration,
    /// Most operations per statement.
    pub max_batch: usize,
    /// How often expired claims are purged.
    pub purge_interval: Duration,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// This request owns the key: write the event, then complete the claim.
    Claimed,
    /// The key completed earlier with the same payload: replay this response.
    Replay(serde_json::Value),
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
        event_id: Uuid,
        reply: Reply<ClaimOutcome>,
    },
    Complete {
        key: ClaimKey,
        payload_hash: String,
        response: serde_json::Value,
        reply: Reply<()>,
    },
    Release {
        key: ClaimKey,
        payload_hash: String,
        reply: Reply<()>,
    },
}

/// Handle to the claim store; cheap to clone.
#[derive(Clone)]
pub struct ClaimStore {
    ops: mpsc::Sender<Op>,
}

impl ClaimStore {
    /// Starts the batching task and the purge task on the current runtime.
    pub fn start(settings: IdempotencySettings) -> Self {
        let (ops, queue) = mpsc::channel(16_384);
        tokio::spawn(run_batches(settings.clone(), queue));
        tokio::spawn(run_purge(settings));
        Self { ops }
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreUnavailable> {
        let started = std::time::Instant::now();
        let answer = self.call_inner(make).await;
        crate::telemetry::ClaimAnswered {
            duration: started.elapsed(),
        }
        .emit();
        answer
    }

    async fn call_inner<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Op,
    ) -> Result<T, StoreUnavailable> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(make(reply))
            .await
            .map_err(|_| StoreUnavailable("the claim task stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreUnavailable("the claim task dropped the request".into()))?
    }

    /// Claims `key` for a payload; see [`ClaimOutcome`].
    pub async fn claim(
        &self,
        key: ClaimKey,
        payload_hash: String,
        event_id: Uuid,
    ) -> Result<ClaimOutcome, StoreUnavailable> {
        self.call(|reply| Op::Claim {
            key,
            payload_hash,
            event_id,
            reply,
        })
        .await
    }

    /// Marks a claim completed with the response to replay.
    pub async fn complete(
        &self,
        key: ClaimKey,
        payload_hash: String,
        response: serde_json::Value,
    ) -> Result<(), StoreUnavailable> {
        self.call(|reply| Op::Complete {
            key,
            payload_hash,
            response,
            reply,
        })
        .await
    }

    /// Gives up a claim whose event was not acknowledged: its lease ends now, so a retry of the
    /// same payload takes it over, and a different payload is still refused.
    pub async fn release(
        &self,
        key: ClaimKey,
        payload_hash: String,
    ) -> Result<(), StoreUnavailable> {
        self.call(|reply| Op::Release {
            key,
            payload_hash,
            reply,
        })
        .await
    }
}

async fn connect(url: &str) -> Result<Client, StoreUnavailable> {
    let connecting = tokio_postgres::connect(url, NoTls);
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

async fn run_batches(settings: IdempotencySettings, mut queue: mpsc::Receiver<Op>) {
    let mut client: Option<Client> = None;
    let mut deferred: Vec<Op> = Vec::new();
    loop {
        let mut ops = std::mem::take(&mut deferred);
        if ops.is_empty() {
            match queue.recv().await {
                Some(op) => ops.push(op),
                None => return,
            }
        }
        while ops.len() < settings.max_batch {
            match queue.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            match connect(&settings.database_url).await {
                Ok(connected) => client = Some(connected),
                Err(err) => {
                    fail_all(ops, &err);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let db = client.as_ref().expect("connected above");
        let (mut claims, mut completes, mut releases) = (Vec::new(), Vec::new(), Vec::new());
        let mut claimed_keys = HashSet::new();
        for op in ops {
            match op {
                Op::Claim { ref key, .. } if !claimed_keys.insert(key.clone()) => deferred.push(op),
                Op::Claim { .. } => claims.push(op),
                Op::Complete { .. } => completes.push(op),
                Op::Release { .. } => releases.push(op),
            }
        }
        for (kind, operations) in [
            ("complete", completes.len()),
            ("release", releases.len()),
            ("claim", claims.len()),
        ] {
            if operations > 0 {
                crate::telemetry::ClaimStatementRun { kind, operations }.emit();
            }
        }
        let mut failed = false;
        if !completes.is_empty() {
            failed |= complete_batch(db, completes).await;
        }
        if !releases.is_empty() {
            failed |= release_batch(db, releases).await;
        }
        if !claims.is_empty() {
            let (retry, claim_failed) = claim_batch(db, &settings, claims).await;
            deferred.extend(retry);
            failed |= claim_failed;
        }
        if failed {
            client = None;
        }
    }
}

fn fail_all(ops: Vec<Op>, err: &StoreUnavailable) {
    for op in ops {
        match op {
            Op::Claim { reply, .. } => {
                let _ = reply.send(Err(err.clone()));
            }
            Op::Complete { reply, .. } | Op::Release { reply, .. } => {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

/// Claims a batch of distinct keys in one statement. Returns the claims to retry (a concurrent
/// writer's row was not yet visible) and whether the connection failed.
async fn claim_batch(
    db: &Client,
    settings: &IdempotencySettings,
    claims: Vec<Op>,
) -> (Vec<Op>, bool) {
    let mut tenants = Vec::with_capacity(claims.len());
    let mut keys = Vec::with_capacity(claims.len());
    let mut hashes = Vec::with_capacity(claims.len());
    let mut event_ids = Vec::with_capacity(claims.len());
    for op in &claims {
        if let Op::Claim {
            key,
            payload_hash,
            event_id,
            ..
        } = op
        {
            tenants.push(key.tenant_id.as_str());
            keys.push(key.key.as_str());
            hashes.push(payload_hash.as_str());
            event_ids.push(*event_id);
        }
    }
    let lease_ms = settings.lease.as_millis() as f64;
    let retention_ms = settings.retention.as_millis() as f64;
    let rows = db
        .query(
            "WITH input AS ( \
                SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[]) \
                WITH ORDINALITY AS i(tenant_id, idempotency_key, payload_hash, event_id, n)), \
             won AS ( \
                INSERT INTO idempotency AS cur (tenant_id, idempotency_key, payload_hash, event_id, \
                    state, lease_until_utc, expires_utc) \
                SELECT tenant_id, idempotency_key, payload_hash, event_id, 'in_flight', \
                    clock_timestamp() + make_interval(secs => $5::float8 / 1000), \
                    clock_timestamp() + make_interval(secs => $6::float8 / 1000) \
                FROM input ORDER BY n \
                ON CONFLICT (tenant_id, idempotency_key) DO UPDATE SET \
                    payload_hash = EXCLUDED.payload_hash, event_id = EXCLUDED.event_id, \
                    state = 'in_flight', response = NULL, claimed_utc = now(), completed_utc = NULL, \
                    lease_until_utc = EXCLUDED.lease_until_utc, expires_utc = EXCLUDED.expires_utc \
                WHERE cur.expires_utc < clock_timestamp() \
                   OR (cur.state = 'in_flight' AND cur.lease_until_utc < clock_timestamp() \
                       AND cur.payload_hash = EXCLUDED.payload_hash) \
                RETURNING tenant_id, idempotency_key) \
             SELECT i.n, w.tenant_id IS NOT NULL, cur.payload_hash, cur.state, cur.response, \
                    cur.lease_until_utc \
             FROM input i \
             LEFT JOIN won w ON w.tenant_id = i.tenant_id AND w.idempotency_key = i.idempotency_key \
             LEFT JOIN idempotency cur ON cur.tenant_id = i.tenant_id \
                                      AND cur.idempotency_key = i.idempotency_key \
             ORDER BY i.n",
            &[&tenants, &keys, &hashes, &event_ids, &lease_ms, &retention_ms],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(err) => {
            fail_all(claims, &unavailable(err));
            return (Vec::new(), true);
        }
    };
    let mut retry = Vec::new();
    for (op, row) in claims.into_iter().zip(rows) {
        let Op::Claim {
            key,
            payload_hash,
            event_id,
            reply,
        } = op
        else {
            continue;
        };
        let won: bool = row.get(1);
        let stored_hash: Option<String> = row.get(2);
        let outcome = match stored_hash {
            _ if won => ClaimOutcome::Claimed,
            // Inserted by a transaction our snapshot cannot see yet: try again.
            None => {
                retry.push(Op::Claim {
                    key,
                    payload_hash,
                    event_id,
                    reply,
                });
                continue;
            }
            Some(stored) if stored != payload_hash => ClaimOutcome::Mismatch,
            Some(_) if row.get::<_, String>(3) == "completed" => ClaimOutcome::Replay(
                row.get::<_, Option<serde_json::Value>>(4)
                    .unwrap_or_default(),
            ),
            Some(_) => ClaimOutcome::InFlight {
                lease_until: row.get(5),
            },
        };
        let _ = reply.send(Ok(outcome));
    }
    (retry, false)
}

fn key_columns(ops: &[Op]) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    let mut tenants = Vec::with_capacity(ops.len());
    let mut keys = Vec::with_capacity(ops.len());
    let mut hashes = Vec::with_capacity(ops.len());
    for op in ops {
        if let Op::Complete {
            key, payload_hash, ..
        }
        | Op::Release {
            key, payload_hash, ..
        } = op
        {
            tenants.push(key.tenant_id.as_str());
            keys.push(key.key.as_str());
            hashes.push(payload_hash.as_str());
        }
    }
    (tenants, keys, hashes)
}

fn answer(ops: Vec<Op>, result: Result<(), StoreUnavailable>) {
    for op in ops {
        if let Op::Complete { reply, .. } | Op::Release { reply, .. } = op {
            let _ = reply.send(result.clone());
        }
    }
}

async fn complete_batch(db: &Client, ops: Vec<Op>) -> bool {
    let (tenants, keys, hashes) = key_columns(&ops);
    let responses: Vec<&serde_json::Value> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Complete { response, .. } => Some(response),
            _ => None,
        })
        .collect();
    let result = db
        .execute(
            "UPDATE idempotency AS cur SET state = 'completed', response = u.response, \
                completed_utc = now() \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[]) \
                AS u(tenant_id, idempotency_key, payload_hash, response) \
             WHERE cur.tenant_id = u.tenant_id AND cur.idempotency_key = u.idempotency_key \
               AND cur.payload_hash = u.payload_hash",
            &[&tenants, &keys, &hashes, &responses],
        )
        .await;
    drop((tenants, keys, hashes, responses));
    let failed = result.is_err();
    answer(ops, result.map(|_| ()).map_err(unavailable));
    failed
}

async fn release_batch(db: &Client, ops: Vec<Op>) -> bool {
    let (tenants, keys, hashes) = key_columns(&ops);
    let result = db
        .execute(
            "UPDATE idempotency AS cur SET lease_until_utc = clock_timestamp() - interval '1 ms' \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) \
                AS u(tenant_id, idempotency_key, payload_hash) \
             WHERE cur.tenant_id = u.tenant_id AND cur.idempotency_key = u.idempotency_key \
               AND cur.payload_hash = u.payload_hash AND cur.state = 'in_flight'",
            &[&tenants, &keys, &hashes],
        )
        .await;
    drop((tenants, keys, hashes));
    let failed = result.is_err();
    answer(ops, result.map(|_| ()).map_err(unavailable));
    failed
}

async fn run_purge(settings: IdempotencySettings) {
    let mut interval = tokio::time::interval(settings.purge_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let purged = async {
            let client = connect(&settings.database_url).await?;
            client
                .execute(
                    "DELETE FROM idempotency WHERE ctid = ANY (ARRAY( \
                        SELECT ctid FROM idempotency WHERE expires_utc < now() LIMIT 10000))",
                    &[],
                )
                .await
                .map_err(unavailable)
        }
        .await;
        match purged {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "expired idempotency claims purged"),
            Err(err) => tracing::warn!(error = %err, "purging idempotency claims failed"),
        }
    }
}
