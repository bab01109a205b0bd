//! Sentinel's read side: what people ask of the views the dataflow maintains.
//!
//! | module | owns |
//! | --- | --- |
//! | [`feed`] | the live feed's hub: `LISTEN` for commits, read them once, broadcast to subscribers |
//! | [`stream`] | `GET /v1/stream`: Server-Sent Events with back-fill and resume |
//! | [`plan`] | `POST /v1/query`'s planner: checks SQL against the subset, binds each view to the tenant |
//! | [`dead_letters`] | `GET /v1/dead-letters[/{id}]` and `POST /v1/dead-letters/replay` |
//! | [`slo`] | `GET /v1/slo`: compliance, error budget and burn rates of both SLOs from `slo_samples` |
//! | [`query`] | `POST/GET /v1/query`: planned SQL run read-only under row-level security |
//! | [`pool`] | the read connections and the read error type |
//! | [`telemetry`] | metrics of the feed and the query endpoint |

pub mod dead_letters;
pub mod feed;
pub mod plan;
pub mod pool;
pub mod query;
pub mod slo;
pub mod stream;
pub mod telemetry;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use ingress::Authenticator;

pub use feed::{FeedHub, FeedSettings};
pub use pool::{read_pool, ReadError, ReadPool};
pub use slo::{SloObjectives, SloState};

/// The caller, once its token checked out and it holds `role`; else the 401/403 answer.
pub(crate) fn authorize(
    auth: &Authenticator,
    headers: &axum::http::HeaderMap,
    role: ingress::Role,
) -> Result<ingress::Principal, axum::response::Response> {
    use axum::response::IntoResponse;
    let principal = auth
        .authenticate(headers)
        .map_err(IntoResponse::into_response)?;
    principal
        .require(role)
        .map_err(IntoResponse::into_response)?;
    Ok(principal)
}

/// Largest body of a read-side request (`POST /v1/query`, `POST /v1/dead-letters/replay`).
pub const MAX_REQUEST_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Why a read-side request's JSON body was refused.
pub(crate) enum JsonBodyError {
    /// The body was too large or could not be read: answer this problem (413 or 400).
    Body(ingress::ApiError),
    /// The body is not JSON of the expected shape, or not sent as JSON: the detail of a 400.
    Invalid(String),
}

/// A read-side request's JSON body (`application/json` or `application/*+json`), read under
/// [`MAX_REQUEST_BODY_BYTES`]; an over-limit body is drained before the 413 (see
/// [`ingress::body`]). Read it before anything else can refuse the request, so that every
/// answer goes to a client that has finished sending.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<T, JsonBodyError> {
    let bytes = ingress::body::read_limited(headers, body, MAX_REQUEST_BODY_BYTES)
        .await
        .map_err(|err| JsonBodyError::Body(err.into()))?;
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .is_some_and(|essence| {
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        });
    if !is_json {
        return Err(JsonBodyError::Invalid(
            "Expected request with `Content-Type: application/json`".to_owned(),
        ));
    }
    serde_json::from_slice(&bytes).map_err(|err| {
        JsonBodyError::Invalid(format!(
            "Failed to deserialize the JSON body into the target type: {err}"
        ))
    })
}

/// 503 for a read that PostgreSQL could not serve (`detail` says which), retriable after 1 s.
pub(crate) fn database_unavailable(detail: &str) -> ingress::ApiError {
    ingress::ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "database-unavailable",
        "Database unavailable",
        detail,
    )
    .retry_after(1)
}

/// Everything the read endpoints share.
#[derive(Clone)]
pub struct ServingState {
    /// Read connections.
    pub pool: ReadPool,
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// The live feed.
    pub feed: FeedHub,
    /// What replaying dead letters needs.
    pub replay: dead_letters::ReplayContext,
    /// Limits of the query endpoint.
    pub query: query::QuerySettings,
    /// The queries each tenant runs.
    pub query_slots: query::TenantSlots,
}

/// The read routes: `/v1/stream`, `/v1/query`, `/v1/dead-letters…` and `/v1/slo`.
pub fn router(serving: ServingState, slo: SloState) -> Router {
    telemetry::register();
    Router::new()
        .route("/v1/stream", get(stream::get_stream))
        .route("/v1/query", get(query::get_query).post(query::post_query))
        .route("/v1/dead-letters", get(dead_letters::list_dead_letters))
        .route(
            "/v1/dead-letters/replay",
            post(dead_letters::replay_dead_letters),
        )
        .route("/v1/dead-letters/{id}", get(dead_letters::get_dead_letter))
        .with_state(serving)
        .merge(slo::router(slo))
}

/// The read side's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        stream::get_stream,
        query::post_query,
        query::get_query,
        dead_letters::list_dead_letters,
        dead_letters::get_dead_letter,
        dead_letters::replay_dead_letters
    ),
    components(schemas(
        query::QueryRequest,
        query::QueryResult,
        query::Column,
        dead_letters::DeadLetterPage,
        dead_letters::DeadLetterSummary,
        dead_letters::DeadLetterSnapshot,
        dead_letters::ReplayRecord,
        dead_letters::ReplayRequest,
        dead_letters::ReplayReport,
        dead_letters::ReplayResult,
        dead_letters::DeadLetterFilter
    )),
    tags((name = "serving", description = "The live feed, queries over the views, dead letters"))
)]
pub struct ServingApi;
