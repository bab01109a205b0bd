//! The OpenAPI 3.1 description of the gateway, generated from the handlers' annotations; the
//! `sentinel` binary merges it with the other surfaces and serves it at `GET /openapi.json`.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The event envelope, as documented (validation lives in `operators::envelope`).
#[derive(ToSchema)]
#[schema(as = Envelope)]
#[allow(dead_code)]
pub struct EnvelopeDoc {
    /// Client-chosen unique id, hyphenated UUID.
    #[schema(rename = "eventId", format = Uuid)]
    event_id: String,
    /// The tenant; must be the token's tenant.
    #[schema(rename = "tenantId", pattern = "^[A-Za-z0-9._-]{1,64}$")]
    tenant_id: String,
    /// The emitting service.
    #[schema(pattern = "^[A-Za-z0-9._:/-]{1,128}$")]
    source: String,
    /// The event type.
    #[schema(rename = "type", pattern = "^[A-Za-z0-9._:/-]{1,128}$")]
    event_type: String,
    /// When it happened: RFC 3339 with an offset, at most the allowed skew in the future.
    #[schema(rename = "timestampUtc", format = DateTime)]
    timestamp_utc: String,
    /// Payload schema version.
    #[schema(rename = "schemaVersion", minimum = 1, maximum = 2147483647)]
    schema_version: i64,
    /// The entity stream (ordering and partitioning key).
    #[schema(rename = "streamKey", pattern = "^[!-{}~]{1,256}$")]
    stream_key: String,
    /// A JSON object, nested at most 32 levels, without NUL characters.
    payload: serde_json::Map<String, serde_json::Value>,
}

/// One violation of the envelope contract.
#[derive(ToSchema)]
#[schema(as = Violation)]
#[allow(dead_code)]
pub struct ViolationDoc {
    /// JSON pointer (RFC 6901) to the offending value.
    pointer: String,
    /// What is wrong with it.
    detail: String,
}

/// Every problem type Sentinel answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum ProblemType {
    /// 400: the body is not JSON.
    #[serde(rename = "/problems/malformed-json")]
    MalformedJson,
    /// 400: not a valid envelope.
    #[serde(rename = "/problems/invalid-event")]
    InvalidEvent,
    /// 400: bad or missing Idempotency-Key.
    #[serde(rename = "/problems/invalid-idempotency-key")]
    InvalidIdempotencyKey,
    /// 400: a batch line is not `{idempotencyKey, event}`.
    #[serde(rename = "/problems/invalid-batch-line")]
    InvalidBatchLine,
    /// 400: a batch without lines.
    #[serde(rename = "/problems/empty-batch")]
    EmptyBatch,
    /// 400: the body could not be read.
    #[serde(rename = "/problems/unreadable-body")]
    UnreadableBody,
    /// 401: missing or invalid token.
    #[serde(rename = "/problems/unauthorized")]
    Unauthorized,
    /// 403: missing role.
    #[serde(rename = "/problems/missing-role")]
    MissingRole,
    /// 403: tenantId is not the token's tenant.
    #[serde(rename = "/problems/tenant-mismatch")]
    TenantMismatch,
    /// 404.
    #[serde(rename = "/problems/not-found")]
    NotFound,
    /// 405.
    #[serde(rename = "/problems/method-not-allowed")]
    MethodNotAllowed,
    /// 409: key reused with another payload.
    #[serde(rename = "/problems/idempotency-key-mismatch")]
    IdempotencyKeyMismatch,
    /// 409: same request in flight elsewhere.
    #[serde(rename = "/problems/idempotency-key-in-flight")]
    IdempotencyKeyInFlight,
    /// 413: body too large.
    #[serde(rename = "/problems/body-too-large")]
    BodyTooLarge,
    /// 413: too many lines.
    #[serde(rename = "/problems/batch-too-large")]
    BatchTooLarge,
    /// 413: the broker's record limit.
    #[serde(rename = "/problems/event-too-large")]
    EventTooLarge,
    /// 415.
    #[serde(rename = "/problems/unsupported-media-type")]
    UnsupportedMediaType,
    /// 429: too many events in flight.
    #[serde(rename = "/problems/overloaded")]
    Overloaded,
    /// 429: the tenant runs as many queries at once as it may.
    #[serde(rename = "/problems/too-many-queries")]
    TooManyQueries,
    /// 500: the broker refused the record.
    #[serde(rename = "/problems/broker-rejected")]
    BrokerRejected,
    /// 500: unexpected failure.
    #[serde(rename = "/problems/internal")]
    Internal,
    /// 503: no broker acknowledgement.
    #[serde(rename = "/problems/broker-unavailable")]
    BrokerUnavailable,
    /// 503: claim store unreachable.
    #[serde(rename = "/problems/idempotency-store-unavailable")]
    IdempotencyStoreUnavailable,
    /// 503: the request owning the key was interrupted.
    #[serde(rename = "/problems/interrupted")]
    Interrupted,
    /// 503: PostgreSQL could not be read (read endpoints).
    #[serde(rename = "/problems/database-unavailable")]
    DatabaseUnavailable,
    /// 400: a Last-Event-ID that is not a feed position.
    #[serde(rename = "/problems/invalid-last-event-id")]
    InvalidLastEventId,
    /// 400: malformed parameters or body of a read or replay request.
    #[serde(rename = "/problems/invalid-request")]
    InvalidRequest,
    /// 400: SQL outside the supported subset, or refused by PostgreSQL; with its location.
    #[serde(rename = "/problems/invalid-query")]
    InvalidQuery,
    /// 408: the query ran past the statement timeout.
    #[serde(rename = "/problems/query-timeout")]
    QueryTimeout,
    /// 406: no supported media type in Accept.
    #[serde(rename = "/problems/not-acceptable")]
    NotAcceptable,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 (SENTINEL_JWT_SECRET) or RS256/ES256 (SENTINEL_JWKS_FILE); claims \
                         `tenant` and `roles`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The gateway's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Sentinel", description = "Event ingestion gateway and stream-processing pipeline"),
    paths(crate::events::post_event, crate::events::post_batch),
    components(schemas(
        crate::events::Accepted,
        crate::events::BatchResults,
        crate::events::LineResult,
        crate::problem::ApiError,
        crate::problem::SourceLocation,
        EnvelopeDoc,
        ViolationDoc,
        ProblemType
    )),
    modifiers(&BearerAuth),
    tags((name = "events", description = "Sending events"))
)]
pub struct IngressApi;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slug passed to `ApiError::new` in this crate is a documented problem type.
    #[test]
    fn every_problem_type_in_the_code_is_documented() {
        let documented: Vec<String> = serde_json::to_value(IngressApi::openapi()).unwrap()
            ["components"]["schemas"]["ProblemType"]["enum"]
            .as_array()
            .expect("ProblemType enum")
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.ends_with("openapi.rs") {
                continue;
            }
            let text = std::fs::read_to_string(path).unwrap();
            let compact: String = text.split_whitespace().collect();
            for (at, _) in compact.match_indices("ApiError::new(StatusCode::") {
                let rest = &compact[at..];
                let slug = rest.split('"').nth(1).expect("a slug literal");
                found += 1;
                assert!(
                    documented.contains(&format!("/problems/{slug}")),
                    "problem type {slug} is not in the OpenAPI ProblemType enum"
                );
            }
        }
        assert!(found > 15, "the scan found only {found} problems");
    }

    #[test]
    fn the_document_is_openapi_3_1_with_bearer_security() {
        let doc = serde_json::to_value(IngressApi::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(doc["paths"]["/v1/events"]["post"]["responses"]["202"].is_object());
    }
}
