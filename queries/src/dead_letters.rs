//! Dead letters: `GET /v1/dead-letters` (filtered, paged), `GET /v1/dead-letters/{id}` (the full
//! snapshot) and `POST /v1/dead-letters/replay`, which re-validates each dead letter against the
//! current schemas and sends it back into the raw topic with its original identity — event id,
//! idempotency key, received time and trace — so that replaying twice never doubles an effect.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use ingress::{ApiError, EventProducer, Role};
use operators::envelope::EnvelopeLimits;
use operators::headers::RecordHeaders;
use operators::record::SourceRecord;
use operators::trace_context::TraceContext;
use operators::validate::SharedRegistry;
use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;

use crate::pool::ReadError;
use crate::ServingState;

/// What replay needs besides the database.
#[derive(Clone)]
pub struct ReplayContext {
    /// The gateway's producer (acks=all, idempotent).
    pub producer: EventProducer,
    /// The raw topic, with its prefix.
    pub raw_topic: String,
    /// The current schemas, as the dataflow sees them.
    pub schemas: SharedRegistry,
    /// The envelope rules.
    pub limits: EnvelopeLimits,
}

/// Most dead letters listed or replayed per request.
const MAX_PAGE: i64 = 1_000;

/// Filters of the list and of a replay by filter.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterFilter {
    /// Reason code, e.g. `schema_violation`.
    pub reason: Option<String>,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Dead-lettered at or after (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Dead-lettered before (RFC 3339).
    pub to: Option<DateTime<Utc>>,
}

/// Filters and paging of the list.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Reason code, e.g. `schema_violation`.
    pub reason: Option<String>,
    /// Event type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Dead-lettered at or after (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Dead-lettered before (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Most items (1-1000, default 100).
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<i64>,
}

/// The outcome of a dead letter's last replay.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayRecord {
    /// `replayed`, `still_invalid` or `failed`; null when never replayed.
    pub status: Option<String>,
    /// Replays so far.
    pub count: i32,
    /// When it was last replayed.
    pub last_replayed_utc: Option<DateTime<Utc>>,
    /// What happened.
    pub detail: Option<String>,
}

/// A dead letter in a list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSummary {
    /// The dead letter's id.
    pub id: i64,
    /// Reason code.
    pub reason: String,
    /// What was wrong.
    pub message: String,
    /// Event id, when known.
    pub event_id: Option<uuid::Uuid>,
    /// Event type, when known.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Emitting service, when known.
    pub source: Option<String>,
    /// Stream key, when known.
    pub stream_key: Option<String>,
    /// When the gateway received it.
    pub received_utc: Option<DateTime<Utc>>,
    /// When it was dead-lettered.
    pub dead_lettered_utc: DateTime<Utc>,
    /// Trace id.
    pub trace_id: Option<String>,
    /// Replay outcome.
    pub replay: ReplayRecord,
}

/// A page of dead letters, newest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterPage {
    /// The dead letters.
    pub items: Vec<DeadLetterSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<i64>,
}

/// One dead letter with everything kept of it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSnapshot {
    /// The summary fields.
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    /// The idempotency key the event was sent with.
    pub idempotency_key: Option<String>,
    /// Where it was consumed: topic, partition, offset.
    pub source_topic: String,
    /// Partition.
    pub source_partition: i32,
    /// Offset.
    pub source_offset: i64,
    /// The record key (UTF-8, lossy).
    pub record_key: Option<String>,
    /// The original record value as JSON, when it is JSON.
    pub original: Option<serde_json::Value>,
    /// The original record value, byte for byte, base64.
    pub original_base64: String,
}

const SUMMARY_COLUMNS: &str = "id, reason_code, message, event_id, event_type, source, \
    stream_key, received_utc, dead_lettered_utc, trace_id, replay_status, replay_count, \
    last_replayed_utc, replay_detail";

fn summary(row: &tokio_postgres::Row) -> DeadLetterSummary {
    DeadLetterSummary {
        id: row.get(0),
        reason: row.get(1),
        message: row.get(2),
        event_id: row.get(3),
        event_type: row.get(4),
        source: row.get(5),
        stream_key: row.get(6),
        received_utc: row.get(7),
        dead_lettered_utc: row.get(8),
        trace_id: row.get(9),
        replay: ReplayRecord {
            status: row.get(10),
            count: row.get(11),
            last_replayed_utc: row.get(12),
            detail: row.get(13),
        },
    }
}

fn unavailable(err: &ReadError) -> Response {
    tracing::warn!(error = %err, "dead letters unavailable");
    crate::database_unavailable("the dead letters could not be read; retry shortly").into_response()
}

/// `WHERE` conditions of `filter` for `tenant` ($1), numbering parameters from $2.
fn conditions<'a>(
    tenant: &'a String,
    filter: &'a DeadLetterFilter,
) -> (String, Vec<&'a (dyn ToSql + Sync)>) {
    let mut sql = String::from("tenant_id = $1");
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![tenant];
    let mut add = |clause: &str, value: &'a (dyn ToSql + Sync)| {
        params.push(value);
        sql.push_str(&format!(" AND {clause} ${}", params.len()));
    };
    if let Some(reason) = &filter.reason {
        add("reason_code =", reason);
    }
    if let Some(event_type) = &filter.event_type {
        add("event_type =", event_type);
    }
    if let Some(from) = &filter.from {
        add("dead_lettered_utc >=", from);
    }
    if let Some(to) = &filter.to {
        add("dead_lettered_utc <", to);
    }
    (sql, params)
}

/// The tenant's dead letters, newest first.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "serving",
    params(ListParams),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        (status = 400, description = "Malformed filter or paging", body = ApiError, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = ApiError, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the read role", body = ApiError, content_type = "application/problem+json"),
        (status = 503, description = "PostgreSQL unavailable", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list_dead_letters(
    State(state): State<ServingState>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let principal = match crate::authorize(&state.auth, &headers, Role::Read) {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    let page = match params {
        Ok(Query(params)) => params,
        Err(err) => return bad_request(err.body_text()),
    };
    let filter = DeadLetterFilter {
        reason: page.reason.clone(),
        event_type: page.event_type.clone(),
        from: page.from,
        to: page.to,
    };
    let limit = page.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}, got {limit}"
        ));
    }
    let (mut sql, mut params) = conditions(&principal.tenant, &filter);
    let cursor = page.cursor;
    if let Some(cursor) = &cursor {
        params.push(cursor);
        sql.push_str(&format!(" AND id < ${}", params.len()));
    }
    let fetch = limit + 1;
    params.push(&fetch);
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM dead_letter WHERE {sql} ORDER BY id DESC LIMIT ${}",
        params.len()
    );
    let rows = async {
        let client = state.pool.get().await?;
        Ok::<_, ReadError>(client.query(&sql, &params).await?)
    }
    .await;
    match rows {
        Ok(rows) => {
            let mut items: Vec<DeadLetterSummary> = rows.iter().map(summary).collect();
            let next_cursor = if items.len() as i64 > limit {
                items.truncate(limit as usize);
                items.last().map(|item| item.id)
            } else {
                None
            };
            Json(DeadLetterPage { items, next_cursor }).into_response()
        }
        Err(err) => unavailable(&err),
    }
}

fn bad_request(detail: impl Into<String>) -> Response {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid-request",
        "Invalid request",
        detail,
    )
    .into_response()
}

fn not_found(id: i64) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "No such resource",
        format!("no dead letter {id} for this tenant"),
    )
    .into_response()
}

/// One dead letter with its original bytes.
#[utoipa::path(get, path = "/v1/dead-letters/{id}", tag = "serving",
    params(("id" = i64, Path, description = "The dead letter's id")),
    responses(
        (status = 200, description = "The full snapshot", body = DeadLetterSnapshot),
        (status = 401, description = "Missing or invalid bearer token", body = ApiError, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the read role", body = ApiError, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter for this tenant", body = ApiError, content_type = "application/problem+json"),
        (status = 503, description = "PostgreSQL unavailable", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get_dead_letter(
    State(state): State<ServingState>,
    headers: HeaderMap,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Response {
    let principal = match crate::authorize(&state.auth, &headers, Role::Read) {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    let Ok(Path(id)) = id else {
        return bad_request("a dead letter id is an integer");
    };
    let row = async {
        let client = state.pool.get().await?;
        Ok::<_, ReadError>(
            client
                .query_opt(
                    &format!(
                        "SELECT {SUMMARY_COLUMNS}, idempotency_key, source_topic, \
                         source_partition, source_offset, record_key, original \
                         FROM dead_letter WHERE id = $1 AND tenant_id = $2"
                    ),
                    &[&id, &principal.tenant],
                )
                .await?,
        )
    }
    .await;
    match row {
        Ok(Some(row)) => {
            let key: Option<Vec<u8>> = row.get(18);
            let original: Vec<u8> = row.get(19);
            Json(DeadLetterSnapshot {
                summary: summary(&row),
                idempotency_key: row.get(14),
                source_topic: row.get(15),
                source_partition: row.get(16),
                source_offset: row.get(17),
                record_key: key.map(|k| String::from_utf8_lossy(&k).into_owned()),
                original: serde_json::from_slice(&original).ok(),
                original_base64: base64::engine::general_purpose::STANDARD.encode(&original),
            })
            .into_response()
        }
        Ok(None) => not_found(id),
        Err(err) => unavailable(&err),
    }
}

/// What to replay: `ids`, or every dead letter matching `filter` (one of the two).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayRequest {
    /// Dead letter ids.
    #[serde(default)]
    pub ids: Option<Vec<i64>>,
    /// A filter, as for the list.
    #[serde(default)]
    pub filter: Option<DeadLetterFilter>,
    /// Say what would be replayed, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What happened to one dead letter.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayResult {
    /// The dead letter's id.
    pub id: i64,
    /// The event id, when known.
    pub event_id: Option<uuid::Uuid>,
    /// `replayed`, `would_replay` (dry run), `still_invalid`, `not_replayable` or `failed`.
    pub outcome: &'static str,
    /// Why, for every outcome but `replayed`/`would_replay`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Where the replayed record went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// Its offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
}

/// The answer of a replay.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Dead letters selected.
    pub matched: usize,
    /// Sent back (or, in a dry run, that would be).
    pub replayed: usize,
    /// Still failing validation against the current schemas.
    pub still_invalid: usize,
    /// Conflicts, which replaying cannot resolve.
    pub not_replayable: usize,
    /// Could not be sent (broker unavailable); retry.
    pub failed: usize,
    /// One result per dead letter, in id order.
    pub results: Vec<ReplayResult>,
}

/// Replays dead letters.
#[utoipa::path(post, path = "/v1/dead-letters/replay", tag = "serving",
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "What happened to each dead letter", body = ReplayReport),
        (status = 400, description = "Neither or both of ids and filter, or more than 1000", body = ApiError, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = ApiError, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin role", body = ApiError, content_type = "application/problem+json"),
        (status = 413, description = "Body over 2 MiB", body = ApiError, content_type = "application/problem+json"),
        (status = 503, description = "PostgreSQL unavailable", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn replay_dead_letters(
    State(state): State<ServingState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let body = crate::json_body::<ReplayRequest>(&headers, body).await;
    let principal = match crate::authorize(&state.auth, &headers, Role::Admin) {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    let request = match body {
        Ok(request) => request,
        Err(crate::JsonBodyError::Body(problem)) => return problem.into_response(),
        Err(crate::JsonBodyError::Invalid(detail)) => return bad_request(detail),
    };
    let (mut sql, mut params) = match (&request.ids, &request.filter) {
        (Some(_), Some(_)) | (None, None) => {
            return bad_request("send either \"ids\" or \"filter\", not both and not neither")
        }
        (Some(ids), None) if ids.is_empty() || ids.len() as i64 > MAX_PAGE => {
            return bad_request(format!("\"ids\" holds 1 to {MAX_PAGE} dead letter ids"))
        }
        (Some(ids), None) => {
            let params: Vec<&(dyn ToSql + Sync)> = vec![&principal.tenant, ids];
            ("tenant_id = $1 AND id = ANY($2)".to_owned(), params)
        }
        (None, Some(filter)) => conditions(&principal.tenant, filter),
    };
    let cap = MAX_PAGE + 1;
    params.push(&cap);
    sql = format!(
        "SELECT id, event_id, reason_code, record_key, original, trace_id, received_utc, \
         idempotency_key, source_partition, source_offset \
         FROM dead_letter WHERE {sql} ORDER BY id LIMIT ${}",
        params.len()
    );
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(err) => return unavailable(&err.into()),
    };
    let rows = match client.query(&sql, &params).await {
        Ok(rows) => rows,
        Err(err) => return unavailable(&err.into()),
    };
    if rows.len() as i64 > MAX_PAGE {
        return bad_request(format!(
            "the filter selects more than {MAX_PAGE} dead letters; narrow it (e.g. by time)"
        ));
    }
    let mut report = ReplayReport {
        dry_run: request.dry_run,
        matched: rows.len(),
        replayed: 0,
        still_invalid: 0,
        not_replayable: 0,
        failed: 0,
        results: Vec::with_capacity(rows.len()),
    };
    // An event's dead letters (a `database_rejected` one and those its refused replays left)
    // are replayed by one record: one record each would turn every refused replay into as many
    // new dead letters as were replayed, doubling them at each replay.
    let mut sent_for: HashMap<uuid::Uuid, ReplayResult> = HashMap::new();
    for row in &rows {
        let id: i64 = row.get(0);
        let event_id: Option<uuid::Uuid> = row.get(1);
        let result = match event_id.and_then(|event| sent_for.get(&event)) {
            Some(sent) => ReplayResult { id, ..sent.clone() },
            None => replay_one(&state.replay, row, request.dry_run).await,
        };
        if let ("replayed" | "would_replay", Some(event)) = (result.outcome, result.event_id) {
            sent_for.entry(event).or_insert_with(|| result.clone());
        }
        match result.outcome {
            "replayed" | "would_replay" => report.replayed += 1,
            "still_invalid" => report.still_invalid += 1,
            "not_replayable" => report.not_replayable += 1,
            _ => report.failed += 1,
        }
        let recorded = matches!(result.outcome, "replayed" | "still_invalid" | "failed");
        if recorded && !request.dry_run {
            let detail = match (&result.detail, result.partition, result.offset) {
                (Some(detail), _, _) => detail.clone(),
                (None, Some(partition), Some(offset)) => {
                    format!("sent to partition {partition} at offset {offset}")
                }
                _ => String::new(),
            };
            let updated = client
                .execute(
                    "UPDATE dead_letter SET replay_status = $2, replay_count = replay_count + 1, \
                     last_replayed_utc = now(), replay_detail = $3 WHERE id = $1",
                    &[&result.id, &result.outcome, &detail],
                )
                .await;
            if let Err(err) = updated {
                tracing::warn!(error = %err, id = result.id, "recording a replay outcome failed");
            }
        }
        report.results.push(result);
    }
    tracing::info!(
        tenant = %principal.tenant,
        dry_run = request.dry_run,
        matched = report.matched,
        replayed = report.replayed,
        still_invalid = report.still_invalid,
        "dead letters replayed"
    );
    Json(report).into_response()
}

/// Re-validates one dead letter and, unless `dry_run`, sends it back with its identity.
async fn replay_one(
    context: &ReplayContext,
    row: &tokio_postgres::Row,
    dry_run: bool,
) -> ReplayResult {
    let id: i64 = row.get(0);
    let event_id: Option<uuid::Uuid> = row.get(1);
    let reason: String = row.get(2);
    let key: Option<Vec<u8>> = row.get(3);
    let original: Vec<u8> = row.get(4);
    let trace_id: Option<String> = row.get(5);
    let received_utc: Option<DateTime<Utc>> = row.get(6);
    let idempotency_key: Option<String> = row.get(7);
    let result = |outcome, detail: Option<String>| ReplayResult {
        id,
        event_id,
        outcome,
        detail,
        partition: None,
        offset: None,
    };
    if reason == "duplicate_event_id_conflict" || reason == "idempotency_key_conflict" {
        return result(
            "not_replayable",
            Some(
                "another payload is stored under this event's identity; replaying cannot apply it"
                    .into(),
            ),
        );
    }
    // The trace continues: same trace id, a new span for the replay.
    let traceparent = trace_id.and_then(|trace| {
        let fresh = TraceContext::mint().to_string();
        let mut parts: Vec<&str> = fresh.split('-').collect();
        if parts.len() == 4 {
            parts[1] = &trace;
        }
        TraceContext::parse(&parts.join("-"))
    });
    let headers = RecordHeaders {
        traceparent,
        tracestate: None,
        idempotency_key,
        received_at: received_utc,
        payload_hash: None,
    };
    let record = SourceRecord {
        topic: Arc::from(context.raw_topic.as_str()),
        partition: row.get(8),
        offset: row.get(9),
        timestamp_ms: None,
        key: key.clone(),
        value: Some(original.clone()),
        headers: headers.clone(),
    };
    let registry = match context.schemas.read() {
        Ok(registry) => Arc::clone(&registry),
        Err(poisoned) => Arc::clone(&poisoned.into_inner()),
    };
    let event = match operators::decode::decode_record(
        record,
        &context.limits,
        Some(&registry),
        received_utc.unwrap_or_else(Utc::now),
    ) {
        Ok(event) => event,
        Err(dead) => return result("still_invalid", Some(dead.message)),
    };
    if dry_run {
        return result("would_replay", None);
    }
    let headers = RecordHeaders {
        payload_hash: Some(event.payload_hash.clone()),
        ..headers
    };
    let record_key = format!("{}|{}", event.tenant_id, event.stream_key);
    match context
        .producer
        .publish(&context.raw_topic, &record_key, &original, &headers)
        .await
    {
        Ok(ack) => ReplayResult {
            partition: Some(ack.partition),
            offset: Some(ack.offset),
            ..result("replayed", None)
        },
        Err(err) => result("failed", Some(format!("the broker did not take it: {err}"))),
    }
}
