//! `POST /v1/query` and `GET /v1/query`: runs a planned query (see [`crate::plan`]) in a
//! read-only transaction as `sentinel_reader` under row-level security, with a statement
//! timeout and a row cap, and answers JSON, CSV or NDJSON by `Accept`. Each tenant runs a
//! bounded number of queries at once ([`TenantSlots`]), so that none can hold the read pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ingress::{ApiError, Role, SourceLocation};
use serde::{Deserialize, Serialize};

use crate::plan::{plan, PlanError};
use crate::pool::ReadError;
use crate::telemetry::{QueryAnswered, QueryOutcome};
use crate::{JsonBodyError, ServingState};

/// Limits of the query endpoint.
#[derive(Debug, Clone)]
pub struct QuerySettings {
    /// Most rows returned; more are cut and `truncated` is set.
    pub row_cap: usize,
    /// Most bytes of rows (as PostgreSQL renders them in JSON) one answer holds; rows past it
    /// are cut and `truncated` is set, so that no query holds more of the gateway's memory.
    pub byte_cap: usize,
    /// PostgreSQL `statement_timeout` of each query.
    pub statement_timeout: Duration,
}

impl Default for QuerySettings {
    fn default() -> Self {
        Self {
            row_cap: 10_000,
            byte_cap: 32 * 1024 * 1024,
            statement_timeout: Duration::from_secs(5),
        }
    }
}

/// How many queries each tenant may run at once: past it a tenant's query gets 429, so that
/// one tenant cannot hold every connection of the read pool (which the live feed's back-fill,
/// the SLO status and the dead-letter endpoints share) for a statement timeout at a time. Cheap to clone;
/// clones share the count.
#[derive(Debug, Clone)]
pub struct TenantSlots {
    limit: usize,
    running: Arc<Mutex<HashMap<String, usize>>>,
}

impl TenantSlots {
    /// At most `limit` (at least one) queries per tenant at once.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            running: Arc::default(),
        }
    }

    /// The most queries a tenant runs at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for one query of `tenant`, held until the slot is dropped; `None` when the tenant
    /// runs its limit already.
    pub fn try_take(&self, tenant: &str) -> Option<TenantSlot> {
        let mut running = self.running.lock().expect("tenant slots lock");
        let count = running.entry(tenant.to_owned()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(TenantSlot {
            slots: self.clone(),
            tenant: tenant.to_owned(),
        })
    }
}

/// One running query's place in its tenant's [`TenantSlots`]; frees it when dropped.
#[derive(Debug)]
pub struct TenantSlot {
    slots: TenantSlots,
    tenant: String,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut running = self.slots.running.lock().expect("tenant slots lock");
        if let Some(count) = running.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.tenant);
            }
        }
    }
}

/// The body of `POST /v1/query` (and the parameters of `GET /v1/query`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One SELECT over one view, in Sentinel's SQL subset.
    pub sql: String,
}

/// One output column.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its PostgreSQL type, e.g. `int8`, `text`, `timestamptz`, `jsonb`.
    #[serde(rename = "type")]
    pub type_name: String,
}

/// The JSON answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult {
    /// The columns, in order.
    pub columns: Vec<Column>,
    /// The rows, each an array in column order.
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Number of rows returned.
    pub row_count: usize,
    /// Whether the row cap cut the result.
    pub truncated: bool,
}

/// What went wrong running a query.
enum Failure {
    Rejected(ApiError),
    Timeout,
    Unavailable(ReadError),
}

impl From<ReadError> for Failure {
    fn from(err: ReadError) -> Self {
        match &err {
            ReadError::Database(db) => classify(db).unwrap_or(Self::Unavailable(err)),
            _ => Self::Unavailable(err),
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(err: tokio_postgres::Error) -> Self {
        ReadError::from(err).into()
    }
}

/// PostgreSQL's verdicts on the query itself (not on the database's health).
fn classify(err: &tokio_postgres::Error) -> Option<Failure> {
    let db = err.as_db_error()?;
    let code = db.code().code();
    if code == "57014" {
        return Some(Failure::Timeout);
    }
    // Class 08 (connection), 53 (resources), 57 (operator intervention), 58 (system): the
    // database's trouble, not the query's.
    if ["08", "53", "57", "58", "XX"]
        .iter()
        .any(|class| code.starts_with(class))
    {
        return None;
    }
    Some(Failure::Rejected(invalid_query(
        format!("PostgreSQL refused the query: {}", db.message()),
        None,
    )))
}

fn invalid_query(detail: String, location: Option<SourceLocation>) -> ApiError {
    let problem = ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid-query",
        "Invalid query",
        detail,
    );
    match location {
        Some(location) => problem.with_location(location),
        None => problem,
    }
}

fn rejected_plan(err: PlanError) -> ApiError {
    let location = SourceLocation {
        line: err.line,
        column: err.column,
        token: err.token,
    };
    let detail = format!(
        "{} (line {}, column {})",
        err.message, location.line, location.column
    );
    invalid_query(detail, Some(location))
}

/// How the answer is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Ndjson,
}

/// The best format `Accept` allows, or `None` when it allows none of them.
fn negotiate(headers: &HeaderMap) -> Option<Format> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Some(Format::Json);
    };
    let mut best: Option<(f32, Format)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let format = match media.as_str() {
            "application/json" | "application/*" | "*/*" => Format::Json,
            "text/csv" | "text/*" => Format::Csv,
            "application/x-ndjson" | "application/ndjson" => Format::Ndjson,
            _ => continue,
        };
        if quality > 0.0 && best.is_none_or(|(q, _)| quality > q) {
            best = Some((quality, format));
        }
    }
    best.map(|(_, format)| format)
}

/// Runs a query: SQL in the JSON body.
#[utoipa::path(post, path = "/v1/query", tag = "serving",
    request_body = QueryRequest,
    responses(
        (status = 200, description = "The rows: JSON by default; `text/csv` or `application/x-ndjson` by Accept", body = QueryResult),
        (status = 400, description = "Outside the SQL subset, or refused by PostgreSQL; `location` points at the offending token", body = ApiError, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = ApiError, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the read role", body = ApiError, content_type = "application/problem+json"),
        (status = 406, description = "Accept allows none of JSON, CSV, NDJSON", body = ApiError, content_type = "application/problem+json"),
        (status = 408, description = "The query ran past the statement timeout", body = ApiError, content_type = "application/problem+json"),
        (status = 413, description = "Body over 2 MiB", body = ApiError, content_type = "application/problem+json"),
        (status = 429, description = "The tenant runs as many queries at once as it may", body = ApiError, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "PostgreSQL unavailable", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn post_query(
    State(state): State<ServingState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = crate::json_body::<QueryRequest>(&headers, body).await;
    if body.is_err() {
        if let Err(response) = crate::authorize(&state.auth, &headers, Role::Read) {
            return response;
        }
    }
    match body {
        Ok(request) => answer(&state, &headers, &request.sql).await,
        Err(JsonBodyError::Body(problem)) => problem.into_response(),
        Err(JsonBodyError::Invalid(detail)) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
            format!("the body must be {{\"sql\": \"…\"}}: {detail}"),
        )
        .into_response(),
    }
}

/// Runs a query: SQL in the `sql` parameter.
#[utoipa::path(get, path = "/v1/query", tag = "serving",
    params(QueryRequest),
    responses(
        (status = 200, description = "As for POST", body = QueryResult),
        (status = 400, description = "As for POST", body = ApiError, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = ApiError, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the read role", body = ApiError, content_type = "application/problem+json"),
        (status = 406, description = "Accept allows none of JSON, CSV, NDJSON", body = ApiError, content_type = "application/problem+json"),
        (status = 408, description = "The query ran past the statement timeout", body = ApiError, content_type = "application/problem+json"),
        (status = 429, description = "As for POST", body = ApiError, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "PostgreSQL unavailable", body = ApiError, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get_query(
    State(state): State<ServingState>,
    headers: HeaderMap,
    params: Result<Query<QueryRequest>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if params.is_err() {
        if let Err(response) = crate::authorize(&state.auth, &headers, Role::Read) {
            return response;
        }
    }
    match params {
        Ok(Query(request)) => answer(&state, &headers, &request.sql).await,
        Err(err) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
            format!("pass the query as ?sql=…: {}", err.body_text()),
        )
        .into_response(),
    }
}

async fn answer(state: &ServingState, headers: &HeaderMap, sql: &str) -> Response {
    let principal = match crate::authorize(&state.auth, headers, Role::Read) {
        Ok(principal) => principal,
        Err(response) => return response,
    };
    let Some(format) = negotiate(headers) else {
        return ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-acceptable",
            "Not acceptable",
            "the query endpoint answers application/json, text/csv or application/x-ndjson",
        )
        .into_response();
    };
    let Some(slot) = state.query_slots.try_take(&principal.tenant) else {
        QueryAnswered {
            outcome: QueryOutcome::Refused,
            duration: Duration::ZERO,
        }
        .emit();
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-queries",
            "Too many queries",
            format!(
                "tenant {:?} already runs as many queries at once as it may ({}, \
                 SENTINEL_QUERY_TENANT_CONCURRENCY); retry when one has answered",
                principal.tenant,
                state.query_slots.limit()
            ),
        )
        .retry_after(1)
        .into_response();
    };
    let started = Instant::now();
    let outcome = match plan(sql) {
        Ok(planned) => {
            // Run to its end even when the client goes away, and hold the slot until then: a
            // request dropped mid-query would free its slot while the database still runs it,
            // so a tenant could keep more queries going than its limit by hanging up.
            let (state, tenant) = (state.clone(), principal.tenant.clone());
            let running = tokio::spawn(async move {
                let outcome = run(&state, &tenant, &planned).await;
                drop(slot);
                outcome
            });
            match running.await {
                Ok(outcome) => outcome,
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Err(_) => Err(Failure::Rejected(crate::database_unavailable(
                    "the query was stopped: the gateway is shutting down",
                ))),
            }
        }
        Err(err) => {
            drop(slot);
            Err(Failure::Rejected(rejected_plan(err)))
        }
    };
    let (kind, response) = match outcome {
        Ok(result) => (QueryOutcome::Ok, render(result, format)),
        Err(Failure::Rejected(problem)) => (QueryOutcome::Rejected, problem.into_response()),
        Err(Failure::Timeout) => (
            QueryOutcome::Timeout,
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "query-timeout",
                "Query timeout",
                format!(
                    "the query ran longer than {} ms; narrow it (WHERE on time, LIMIT)",
                    state.query.statement_timeout.as_millis()
                ),
            )
            .into_response(),
        ),
        Err(Failure::Unavailable(err)) => {
            tracing::warn!(error = %err, "query failed: database unavailable");
            (
                QueryOutcome::Error,
                crate::database_unavailable("the query could not run; retry shortly")
                    .into_response(),
            )
        }
    };
    QueryAnswered {
        outcome: kind,
        duration: started.elapsed(),
    }
    .emit();
    response
}

/// Runs the planned statement in a read-only transaction as `sentinel_reader`, with the
/// tenant set for row-level security, the statement timeout, and the row cap.
async fn run(
    state: &ServingState,
    tenant: &str,
    planned: &crate::plan::PlannedQuery,
) -> Result<QueryResult, Failure> {
    let mut client = state.pool.get().await.map_err(ReadError::from)?;
    // The session's setup is the deployment's business, never the query's: its failure (say,
    // a migrating user without the grant of `sentinel_reader`) is 503, not `invalid-query`.
    let unavailable = |err| Failure::Unavailable(ReadError::Database(err));
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(unavailable)?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}; SET LOCAL ROLE sentinel_reader",
        state.query.statement_timeout.as_millis().max(1)
    ))
    .await
    .map_err(unavailable)?;
    tx.execute(
        "SELECT set_config('sentinel.tenant_id', $1, true)",
        &[&tenant],
    )
    .await
    .map_err(unavailable)?;
    let statement = tx.prepare(&planned.sql).await?;
    let columns: Vec<Column> = statement
        .columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_owned(),
            type_name: c.type_().name().to_owned(),
        })
        .collect();
    let mut names = std::collections::BTreeSet::new();
    for column in &columns {
        if !names.insert(column.name.as_str()) {
            return Err(Failure::Rejected(invalid_query(
                format!(
                    "two result columns are named {:?}; give them distinct names with AS",
                    column.name
                ),
                None,
            )));
        }
    }
    // Every value rendered by PostgreSQL's own JSON conversion, in column order.
    let wrapped = format!(
        "SELECT row_to_json(q.*)::text FROM ({}) AS q LIMIT {}",
        planned.sql,
        state.query.row_cap + 1
    );
    let tenant_param: &(dyn tokio_postgres::types::ToSql + Sync) = &tenant;
    let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = if statement.params().is_empty() {
        &[]
    } else {
        std::slice::from_ref(&tenant_param)
    };
    // Rows are read as they arrive, up to the caps: the rest is never held.
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut truncated = false;
    {
        let rows = tx.query_raw(&wrapped, params.iter().copied()).await?;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = futures::TryStreamExt::try_next(&mut rows).await? {
            let text: &str = row.get(0);
            bytes = bytes.saturating_add(text.len());
            if out.len() == state.query.row_cap || bytes > state.query.byte_cap {
                truncated = true;
                break;
            }
            out.push(json_row(&columns, text)?);
        }
    }
    tx.rollback().await?;
    Ok(QueryResult {
        row_count: out.len(),
        columns,
        rows: out,
        truncated,
    })
}

/// One row, rendered by PostgreSQL as a JSON object, as the values of `columns` in order.
fn json_row(columns: &[Column], text: &str) -> Result<Vec<serde_json::Value>, Failure> {
    let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
        .map_err(|err| {
            Failure::Rejected(invalid_query(
                format!("a row could not be rendered as JSON: {err}"),
                None,
            ))
        })?;
    Ok(columns
        .iter()
        .map(|c| object.remove(&c.name).unwrap_or(serde_json::Value::Null))
        .collect())
}

fn render(result: QueryResult, format: Format) -> Response {
    let truncated = if result.truncated { "true" } else { "false" };
    match format {
        Format::Json => Json(result).into_response(),
        Format::Ndjson => {
            let mut body = String::new();
            for row in &result.rows {
                let object: serde_json::Map<String, serde_json::Value> = result
                    .columns
                    .iter()
                    .zip(row)
                    .map(|(c, v)| (c.name.clone(), v.clone()))
                    .collect();
                body.push_str(&serde_json::Value::Object(object).to_string());
                body.push('\n');
            }
            (
                [
                    (header::CONTENT_TYPE, "application/x-ndjson"),
                    (
                        header::HeaderName::from_static("sentinel-truncated"),
                        truncated,
                    ),
                ],
                body,
            )
                .into_response()
        }
        Format::Csv => {
            let mut body = String::new();
            let header_row: Vec<String> =
                result.columns.iter().map(|c| csv_field(&c.name)).collect();
            body.push_str(&header_row.join(","));
            body.push_str("\r\n");
            for row in &result.rows {
                let fields: Vec<String> = row
                    .iter()
                    .map(|value| match value {
                        serde_json::Value::Null => String::new(),
                        serde_json::Value::String(text) => csv_field(text),
                        other => csv_field(&other.to_string()),
                    })
                    .collect();
                body.push_str(&fields.join(","));
                body.push_str("\r\n");
            }
            (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (
                        header::HeaderName::from_static("sentinel-truncated"),
                        truncated,
                    ),
                ],
                body,
            )
                .into_response()
        }
    }
}

/// One RFC 4180 field: quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_runs_at_most_its_limit_of_queries_at_once() {
        let slots = TenantSlots::new(2);
        let first = slots.try_take("acme").expect("first slot");
        let second = slots.try_take("acme").expect("second slot");
        assert!(slots.try_take("acme").is_none(), "a third query of acme");
        let other = slots
            .try_take("globex")
            .expect("another tenant has its own slots");
        drop(first);
        let third = slots.try_take("acme").expect("a freed slot is taken again");
        drop((second, third, other));
        assert!(
            slots.running.lock().unwrap().is_empty(),
            "tenants without queries are forgotten"
        );
    }

    #[test]
    fn accept_picks_the_best_supported_format() {
        let with = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, accept.parse().unwrap());
            negotiate(&headers)
        };
        assert_eq!(negotiate(&HeaderMap::new()), Some(Format::Json));
        assert_eq!(with("text/csv"), Some(Format::Csv));
        assert_eq!(with("application/x-ndjson"), Some(Format::Ndjson));
        assert_eq!(
            with("text/csv;q=0.5, application/x-ndjson"),
            Some(Format::Ndjson)
        );
        assert_eq!(with("*/*"), Some(Format::Json));
        assert_eq!(with("image/png"), None);
        assert_eq!(with("text/csv;q=0"), None);
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
