//! `POST /v1/events` and `POST /v1/events:batch`: authenticate, validate, claim the
//! idempotency key, produce the event with the shared record headers keyed
//! `tenantId|streamKey`, and answer 202 only after the broker acknowledged it.
//!
//! Each request's claim → produce → complete sequences run in a task of their own (a batch's
//! lines concurrently in one task), so a client that disconnects mid-request never leaves a
//! claim half-done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use operators::canonical::canonical_hash;
use operators::envelope::{
    envelope_from_value, parse_json, EnvelopeError, EnvelopeLimits, EventEnvelope,
};
use operators::headers::{format_received_at, RecordHeaders};
use operators::spans::{self, Hop, OpenSpan};
use operators::trace_context::TraceContext;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::Instrument;

use crate::auth::{Principal, Role};
use crate::body::{discard, read_limited};
use crate::idempotency::{ClaimKey, ClaimOutcome, StoreUnavailable, StoredAnswer};
use crate::kafka::PublishError;
use crate::problem::ApiError;
use crate::IngressState;

/// Header naming the client's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Header set on a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest accepted idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Gateway limits.
#[derive(Debug, Clone)]
pub struct IngressSettings {
    /// Largest accepted body of `POST /v1/events`, in bytes.
    pub max_body_bytes: usize,
    /// Largest accepted body of `POST /v1/events:batch`, in bytes.
    pub max_batch_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Most events being written at once; past it requests get 429.
    pub max_in_flight: usize,
    /// Envelope rules.
    pub limits: EnvelopeLimits,
}

impl IngressSettings {
    /// Most events one batch may hold: `max_batch_events`, or the whole in-flight budget when
    /// that is smaller, since a batch takes its events' share of the budget at once and one
    /// larger than all of it could never be admitted.
    pub fn batch_event_limit(&self) -> usize {
        self.max_batch_events.min(self.max_in_flight)
    }
}

impl Default for IngressSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_batch_bytes: 8 * 1024 * 1024,
            max_batch_events: 1_000,
            max_in_flight: 20_000,
            limits: EnvelopeLimits::default(),
        }
    }
}

/// The 202 body: what the client needs to find its event again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// The event's id, as sent.
    pub event_id: uuid::Uuid,
    /// When the gateway received it (RFC 3339, UTC, microseconds).
    #[schema(format = DateTime, example = "2026-11-24T10:00:00.123456Z")]
    pub received_at_utc: String,
    /// The trace the event travels in (32 hex digits).
    #[schema(pattern = "^[0-9a-f]{32}$")]
    pub trace_id: String,
}

/// The outcome of one accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The 202 body (the original one, when replayed).
    pub accepted: Accepted,
    /// Whether this answer replays an earlier request's.
    pub replayed: bool,
}

/// The 202 body of a stored answer: the same bytes whether first sent or replayed (the receive
/// time is stored to the microsecond, the precision it is written with).
fn accepted_of(answer: &StoredAnswer) -> Accepted {
    Accepted {
        event_id: answer.event_id,
        received_at_utc: format_received_at(&answer.received_at),
        trace_id: hex::encode(answer.trace_id),
    }
}

impl IntoResponse for Ingested {
    fn into_response(self) -> Response {
        let mut response = (StatusCode::ACCEPTED, Json(self.accepted)).into_response();
        if self.replayed {
            response
                .headers_mut()
                .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        }
        response
    }
}

// ---- problems -------------------------------------------------------------------------------

fn is_media_type(value: &str, accepted: &[&str], json_suffix: bool) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    accepted.contains(&essence.as_str())
        || (json_suffix && essence.starts_with("application/") && essence.ends_with("+json"))
}

fn check_content_type(
    headers: &HeaderMap,
    accepted: &[&str],
    json_suffix: bool,
) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    match content_type {
        Some(value) if is_media_type(value, accepted, json_suffix) => Ok(()),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!(
                "Content-Type must be {}, got {}",
                accepted.join(" or "),
                other.map_or("none".to_owned(), |v| format!("{v:?}"))
            ),
        )),
    }
}

fn envelope_problem(err: EnvelopeError) -> ApiError {
    match err {
        EnvelopeError::MalformedJson { .. } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            err.to_string(),
        ),
        EnvelopeError::Invalid { ref violations } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-event",
            "Invalid event",
            err.to_string(),
        )
        .with_errors(violations.clone()),
    }
}

fn publish_problem(err: PublishError) -> ApiError {
    if err.is_too_large() {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event-too-large",
            "Event too large for the broker",
            "the broker refused the event because it exceeds its maximum record size",
        );
    }
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    if err.is_retriable() {
        tracing::warn!(error = %err, cause, "publish failed, answering 503");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            "Broker unavailable",
            "the broker did not acknowledge the event in time; retry with the same \
             Idempotency-Key",
        )
        .retry_after(1);
    }
    tracing::error!(error = %err, cause, "broker refused a record");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "broker-rejected",
        "Broker refused the event",
        "the broker refused the event; this is a gateway configuration problem",
    )
}

fn store_problem(err: StoreUnavailable) -> ApiError {
    tracing::warn!(error = %err, "idempotency store unavailable, answering 503");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "idempotency-store-unavailable",
        "Idempotency store unavailable",
        "the idempotency claim could not be recorded; retry with the same Idempotency-Key",
    )
    .retry_after(1)
}

fn mismatch_problem() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency-key-mismatch",
        "Idempotency key reused with another payload",
        "this Idempotency-Key was already used with a different event; use a new key for a new event",
    )
}

fn in_flight_problem(retry_after: Duration) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency-key-in-flight",
        "Request with this idempotency key in progress",
        "another request with this Idempotency-Key is still being written; retry after the \
         indicated delay to get its outcome",
    )
    .retry_after(retry_after.as_secs().clamp(1, 60) as u32)
}

fn overloaded_problem() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "overloaded",
        "Too many events in flight",
        "the gateway is writing as many events as it is configured to hold; retry shortly",
    )
    .retry_after(1)
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let invalid = |detail: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-idempotency-key",
            "Missing or invalid Idempotency-Key",
            detail.to_owned(),
        )
    };
    let value = headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .ok_or_else(|| invalid("the Idempotency-Key header is required"))?;
    let key = value
        .to_str()
        .map_err(|_| invalid("the Idempotency-Key must be visible ASCII"))?;
    check_idempotency_key(key).map_err(|detail| invalid(&detail))?;
    Ok(key.to_owned())
}

fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err("the Idempotency-Key must not be empty".into());
    }
    if key.chars().count() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(format!(
            "the Idempotency-Key must be at most {MAX_IDEMPOTENCY_KEY_LEN} characters"
        ));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err("the Idempotency-Key must not contain control characters".into());
    }
    // What an HTTP header can carry, so that a batch line's key can also be retried or reused
    // through `POST /v1/events`.
    if !key.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
        return Err("the Idempotency-Key must be visible ASCII (and spaces)".into());
    }
    Ok(())
}

/// The client's valid `traceparent`, if any.
fn client_trace(headers: &HeaderMap) -> Option<TraceContext> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
}

/// The trace a request travels in: the client's `traceparent` continued, or a new trace.
pub(crate) fn request_trace(headers: &HeaderMap) -> (TraceContext, Option<String>) {
    let parent = client_trace(headers);
    match parent {
        Some(parent) => {
            let state = headers
                .get("tracestate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (parent.child(), state)
        }
        None => (TraceContext::mint(), None),
    }
}

// ---- in-process coordination of one key ------------------------------------------------------

type SharedOutcome = Option<Result<Ingested, ApiError>>;

/// Requests with the same key in this process: the first owns the claim; the others wait for
/// its outcome, and replay it when they carry the same payload or take their own turn when not
/// (the stored claim, not the first request, decides who holds the key).
#[derive(Default)]
pub(crate) struct LocalClaims {
    owners: Mutex<HashMap<ClaimKey, (String, watch::Receiver<SharedOutcome>)>>,
}

enum Turn {
    Owner(OwnerGuard),
    Wait {
        outcome: watch::Receiver<SharedOutcome>,
        same_payload: bool,
    },
}

struct OwnerGuard {
    claims: Arc<LocalClaims>,
    key: ClaimKey,
    outcome: watch::Sender<SharedOutcome>,
}

impl LocalClaims {
    fn enter(self: &Arc<Self>, key: &ClaimKey, payload_hash: &str) -> Turn {
        let mut owners = self.owners.lock().expect("local claims lock");
        if let Some((hash, outcome)) = owners.get(key) {
            return Turn::Wait {
                outcome: outcome.clone(),
                same_payload: hash == payload_hash,
            };
        }
        let (sender, receiver) = watch::channel(None);
        owners.insert(key.clone(), (payload_hash.to_owned(), receiver));
        Turn::Owner(OwnerGuard {
            claims: Arc::clone(self),
            key: key.clone(),
            outcome: sender,
        })
    }
}

impl OwnerGuard {
    fn finish(self, outcome: &Result<Ingested, ApiError>) {
        self.outcome.send_replace(Some(outcome.clone()));
    }
}

impl Drop for OwnerGuard {
    fn drop(&mut self) {
        self.claims
            .owners
            .lock()
            .expect("local claims lock")
            .remove(&self.key);
        if self.outcome.borrow().is_none() {
            self.outcome.send_replace(Some(Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "interrupted",
                "Request interrupted",
                "the request with this Idempotency-Key was interrupted; retry",
            )
            .retry_after(1))));
        }
    }
}

// ---- the write path ----------------------------------------------------------------------------

/// One validated event on its way to the broker.
struct Submission {
    key: ClaimKey,
    envelope: EventEnvelope,
    payload_hash: String,
    /// The exact bytes the client sent for this event.
    value: Bytes,
    trace: TraceContext,
    /// The span the receive span hangs under: the client's, or the batch request's.
    trace_parent: Option<TraceContext>,
    tracestate: Option<String>,
    received_at: DateTime<Utc>,
}

/// Takes this event's turn for its key at once (so that the order of calls decides which of
/// several same-key requests is the original) and returns the rest of the work to run.
fn ingest(
    state: IngressState,
    mut submission: Submission,
) -> impl std::future::Future<Output = Result<Ingested, ApiError>> + Send + 'static {
    let turn = state
        .inner
        .local
        .enter(&submission.key, &submission.payload_hash);
    let receive = receive_otel_span(&mut submission);
    let work = finish_ingest(state, submission, turn);
    async move {
        let outcome = work.await;
        if let Some(mut span) = receive {
            let status = match &outcome {
                Ok(_) => 202,
                Err(problem) => i64::from(problem.status),
            };
            span.set(KeyValue::new("http.response.status_code", status));
            span.end();
        }
        outcome
    }
}

/// Opens the event's `gateway.receive` span with the id its record will carry as the parent of
/// every later hop, and makes the record's sampled flag follow the sampler's decision.
fn receive_otel_span(submission: &mut Submission) -> Option<OpenSpan> {
    if !spans::enabled() {
        return None;
    }
    let envelope = &submission.envelope;
    let mut attributes = spans::event_attributes(
        &envelope.tenant_id,
        &envelope.event_id.to_string(),
        &envelope.event_type,
        &envelope.source,
        &envelope.stream_key,
        Some(&submission.key.key),
    );
    attributes.push(KeyValue::new("http.request.method", "POST"));
    let span = OpenSpan::start(
        "gateway.receive",
        SpanKind::Server,
        submission.trace_parent,
        submission.trace,
        submission.received_at.into(),
        attributes,
    )?;
    let trace = &mut submission.trace;
    trace.flags = if span.sampled() {
        trace.flags | 1
    } else {
        trace.flags & !1
    };
    Some(span)
}

async fn finish_ingest(
    state: IngressState,
    submission: Submission,
    mut turn: Turn,
) -> Result<Ingested, ApiError> {
    loop {
        match turn {
            Turn::Wait {
                mut outcome,
                same_payload,
            } => {
                let waited =
                    tokio::time::timeout(state.inner.lease, outcome.wait_for(Option::is_some))
                        .await;
                let done = match waited {
                    Ok(Ok(done)) => done.clone().expect("waited for Some"),
                    _ => return Err(in_flight_problem(Duration::from_secs(1))),
                };
                if same_payload {
                    return done.map(|ingested| Ingested {
                        replayed: true,
                        ..ingested
                    });
                }
                // The owner carried another payload: whether it or this request holds the key
                // is for the stored claim to say, so take a turn of our own.
                turn = state
                    .inner
                    .local
                    .enter(&submission.key, &submission.payload_hash);
            }
            Turn::Owner(guard) => {
                let outcome = write_owned(&state, submission).await;
                guard.finish(&outcome);
                return outcome;
            }
        }
    }
}

async fn write_owned(state: &IngressState, submission: Submission) -> Result<Ingested, ApiError> {
    let Submission {
        key,
        envelope,
        payload_hash,
        value,
        trace,
        tracestate,
        received_at,
        ..
    } = submission;
    let claims = &state.inner.claims;
    // The answer does not depend on the broker's: it is stored with the claim, to be replayed
    // once the claim is completed.
    let answer = StoredAnswer {
        event_id: envelope.event_id,
        received_at,
        trace_id: trace.trace_id,
    };
    match claims
        .claim(key.clone(), payload_hash.clone(), answer)
        .await
        .map_err(store_problem)?
    {
        ClaimOutcome::Claimed => {}
        ClaimOutcome::Replay(stored) => {
            return Ok(Ingested {
                accepted: accepted_of(&stored),
                replayed: true,
            });
        }
        ClaimOutcome::Unreadable => {
            tracing::error!(
                tenant = %key.tenant_id,
                "the stored answer of an idempotency claim is unreadable"
            );
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the stored response for this Idempotency-Key cannot be read",
            ));
        }
        ClaimOutcome::Mismatch => return Err(mismatch_problem()),
        ClaimOutcome::InFlight { lease_until } => {
            let left = (lease_until - Utc::now()).to_std().unwrap_or_default();
            return Err(in_flight_problem(left));
        }
    }
    let headers = RecordHeaders {
        traceparent: Some(trace),
        tracestate,
        idempotency_key: Some(key.key.clone()),
        received_at: Some(received_at),
        payload_hash: Some(payload_hash.clone()),
    };
    let produce_started = std::time::SystemTime::now();
    let published = state
        .inner
        .producer
        .publish(
            &state.inner.raw_topic,
            &envelope.record_key(),
            &value,
            &headers,
        )
        .await;
    if spans::enabled() && trace.sampled() {
        let mut attributes = match &published {
            Ok(ack) => spans::messaging_attributes(
                "send",
                &state.inner.raw_topic,
                ack.partition,
                ack.offset,
            ),
            Err(err) => vec![KeyValue::new("error.type", err.to_string())],
        };
        attributes.push(KeyValue::new("messaging.system", "kafka"));
        attributes.push(KeyValue::new(
            "messaging.kafka.message.key",
            envelope.record_key(),
        ));
        attributes.push(KeyValue::new("event.id", envelope.event_id.to_string()));
        attributes.push(KeyValue::new("tenant.id", envelope.tenant_id.clone()));
        Hop::new(
            "kafka.produce",
            SpanKind::Producer,
            Some(trace),
            produce_started,
            std::time::SystemTime::now(),
        )
        .with(attributes)
        .record();
    }
    match published {
        Ok(ack) => {
            tracing::debug!(
                partition = ack.partition,
                offset = ack.offset,
                "event acknowledged by the broker"
            );
            if let Err(err) = claims.complete(key, payload_hash, received_at).await {
                // The event is durable; a retry after the lease re-sends it and the dataflow's
                // de-duplication absorbs the copy.
                tracing::warn!(error = %err, "claim not completed after the broker's ack");
            }
            Ok(Ingested {
                accepted: accepted_of(&answer),
                replayed: false,
            })
        }
        Err(err) if err.is_retriable() => {
            // The broker may still append the record: the key stays with this payload.
            if let Err(release) = claims.release(key, payload_hash, received_at).await {
                tracing::warn!(error = %release, "claim not released; it frees itself after its lease");
            }
            Err(publish_problem(err))
        }
        Err(err) => {
            // Refused for good (too large, say): nothing was written under the key, so a
            // corrected event may use it.
            if let Err(forget) = claims.forget(key, payload_hash, received_at).await {
                tracing::warn!(error = %forget, "claim not forgotten; it frees itself after its lease");
            }
            Err(publish_problem(err))
        }
    }
}

/// The span of one event's receive hop: its trace position and identity, for every log line
/// written while the event is handled.
fn receive_span(submission: &Submission) -> tracing::Span {
    // Text fields are recorded as `&str`, not through `Display`: a span is opened for every
    // event, so each field's formatting counts.
    tracing::info_span!(
        "gateway.receive",
        trace_id = submission.trace.trace_id_hex().as_str(),
        span_id = submission.trace.span_id_hex().as_str(),
        tenant_id = submission.key.tenant_id.as_str(),
        event_id = %submission.envelope.event_id,
        idempotency_key = submission.key.key.as_str(),
        stream_key = submission.envelope.stream_key.as_str(),
        source = submission.envelope.source.as_str(),
        event_type = submission.envelope.event_type.as_str(),
    )
}

/// Validates one event document against the contract and the caller's tenant.
fn submission(
    state: &IngressState,
    principal: &Principal,
    idempotency_key: String,
    value: Bytes,
    (trace, trace_parent): (TraceContext, Option<TraceContext>),
    tracestate: Option<String>,
    received_at: DateTime<Utc>,
) -> Result<Submission, ApiError> {
    let document = parse_json(&value).map_err(envelope_problem)?;
    let payload_hash =
        canonical_hash(&document).map_err(|inexact| envelope_problem(inexact.into()))?;
    let envelope = envelope_from_value(document, &state.inner.settings.limits, received_at)
        .map_err(envelope_problem)?;
    if envelope.tenant_id != principal.tenant {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "tenant-mismatch",
            "Tenant mismatch",
            format!(
                "tenantId {:?} is not the token's tenant {:?}",
                envelope.tenant_id, principal.tenant
            ),
        ));
    }
    Ok(Submission {
        key: ClaimKey {
            tenant_id: principal.tenant.clone(),
            key: idempotency_key,
        },
        envelope,
        payload_hash,
        value,
        trace,
        trace_parent,
        tracestate,
        received_at,
    })
}

fn authorize(state: &IngressState, headers: &HeaderMap) -> Result<Principal, Response> {
    let principal = state
        .inner
        .auth
        .authenticate(headers)
        .map_err(IntoResponse::into_response)?;
    principal
        .require(Role::Ingest)
        .map_err(IntoResponse::into_response)?;
    Ok(principal)
}

/// Handler of `POST /v1/events`.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    request_body(content = crate::openapi::EnvelopeDoc, content_type = "application/json",
        description = "One event envelope"),
    params(
        ("Idempotency-Key" = String, Header, description = "1-255 visible ASCII characters or spaces; scoped by tenant"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context to continue"),
        ("tracestate" = Option<String>, Header, description = "W3C trace state, passed through"),
    ),
    responses(
        (status = 202, description = "Written and acknowledged by the broker (or a replay)", body = Accepted,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier request"))),
        (status = 400, description = "Malformed JSON, invalid event or invalid Idempotency-Key", body = ApiError, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = ApiError, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer challenge"))),
        (status = 403, description = "Missing role or tenant mismatch", body = ApiError, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency key reused with another payload, or in flight elsewhere", body = ApiError, content_type = "application/problem+json"),
        (status = 413, description = "Body or event too large", body = ApiError, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not JSON", body = ApiError, content_type = "application/problem+json"),
        (status = 429, description = "Too many events in flight", body = ApiError, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 500, description = "Broker refused the record, or an internal failure", body = ApiError, content_type = "application/problem+json"),
        (status = 503, description = "Broker or idempotency store unavailable", body = ApiError, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn post_event(
    State(state): State<IngressState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Authenticated first: an anonymous client must not make the gateway buffer its body.
    let principal = match authorize(&state, &headers) {
        Ok(principal) => principal,
        Err(response) => {
            discard(&headers, body).await;
            return response;
        }
    };
    let body = read_limited(&headers, body, state.inner.settings.max_body_bytes).await;
    let received_at = operators::headers::received_now();
    let prepared = (|| {
        check_content_type(&headers, &["application/json"], true)?;
        let key = idempotency_key(&headers)?;
        let body = body?;
        let (trace, tracestate) = request_trace(&headers);
        submission(
            &state,
            &principal,
            key,
            body,
            (trace, client_trace(&headers)),
            tracestate,
            received_at,
        )
    })();
    let submission = match prepared {
        Ok(submission) => submission,
        Err(problem) => return problem.into_response(),
    };
    let Ok(permit) = Arc::clone(&state.inner.in_flight).try_acquire_owned() else {
        return overloaded_problem().into_response();
    };
    let span = receive_span(&submission);
    let task = tokio::spawn(
        async move {
            let outcome = ingest(state, submission).await;
            drop(permit);
            outcome
        }
        .instrument(span),
    );
    match task.await {
        Ok(Ok(ingested)) => ingested.into_response(),
        Ok(Err(problem)) => problem.into_response(),
        Err(join) => {
            tracing::error!(error = %join, "ingest task failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the request failed unexpectedly; retry with the same Idempotency-Key",
            )
            .into_response()
        }
    }
}

// ---- batches -----------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BatchLine {
    idempotency_key: String,
    event: Box<serde_json::value::RawValue>,
}

/// One line's result in a batch answer.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineResult {
    /// 1-based line number in the request body.
    pub line: usize,
    /// The status the single endpoint would have answered.
    pub status: u16,
    /// The event's id, for accepted lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<uuid::Uuid>,
    /// When the gateway received it, for accepted lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_at_utc: Option<String>,
    /// The event's trace, for accepted lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Whether the line replays an earlier request.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// The problem, for refused lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<ApiError>,
}

/// The batch answer: one result per non-empty line, in order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BatchResults {
    /// Lines accepted (including replays).
    pub accepted: usize,
    /// Lines refused.
    pub rejected: usize,
    /// Per-line results.
    pub results: Vec<LineResult>,
}

fn line_result(line: usize, outcome: Result<Ingested, ApiError>) -> LineResult {
    match outcome {
        Ok(ingested) => LineResult {
            line,
            status: StatusCode::ACCEPTED.as_u16(),
            event_id: Some(ingested.accepted.event_id),
            received_at_utc: Some(ingested.accepted.received_at_utc),
            trace_id: Some(ingested.accepted.trace_id),
            replayed: ingested.replayed,
            problem: None,
        },
        Err(problem) => LineResult {
            line,
            status: problem.status,
            event_id: None,
            received_at_utc: None,
            trace_id: None,
            replayed: false,
            problem: Some(problem),
        },
    }
}

/// Handler of `POST /v1/events:batch` (NDJSON, one `{"idempotencyKey", "event"}` per line).
#[utoipa::path(
    post,
    path = "/v1/events:batch",
    tag = "events",
    request_body(content = String, content_type = "application/x-ndjson",
        description = "One `{\"idempotencyKey\": string, \"event\": Envelope}` object per line"),
    params(
        ("traceparent" = Option<String>, Header, description = "W3C trace context to continue"),
    ),
    responses(
        (status = 200, description = "One result per line, each with the single endpoint's semantics", body = BatchResults),
        (status = 400, description = "Empty batch or unreadable body", body = ApiError, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = ApiError, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer challenge"))),
        (status = 403, description = "Missing role", body = ApiError, content_type = "application/problem+json"),
        (status = 413, description = "Too many lines or too many bytes", body = ApiError, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not NDJSON", body = ApiError, content_type = "application/problem+json"),
        (status = 429, description = "The batch does not fit the in-flight budget", body = ApiError, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn post_batch(
    State(state): State<IngressState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Authenticated first: an anonymous client must not make the gateway buffer its body.
    let principal = match authorize(&state, &headers) {
        Ok(principal) => principal,
        Err(response) => {
            discard(&headers, body).await;
            return response;
        }
    };
    let body = read_limited(&headers, body, state.inner.settings.max_batch_bytes).await;
    let received_at = operators::headers::received_now();
    let settings = &state.inner.settings;
    let prepared = (|| {
        check_content_type(
            &headers,
            &["application/x-ndjson", "application/jsonl"],
            false,
        )?;
        Ok::<_, ApiError>(body?)
    })();
    let body = match prepared {
        Ok(body) => body,
        Err(problem) => return problem.into_response(),
    };
    let lines: Vec<(usize, Bytes)> = body
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(index, line)| (index + 1, body.slice_ref(line)))
        .collect();
    if lines.is_empty() {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty-batch",
            "Empty batch",
            "the batch has no events",
        )
        .into_response();
    }
    if lines.len() > settings.batch_event_limit() {
        let limit = if settings.max_in_flight < settings.max_batch_events {
            format!(
                "the gateway's whole in-flight budget (SENTINEL_MAX_IN_FLIGHT) is {}",
                settings.max_in_flight
            )
        } else {
            format!("the limit is {}", settings.max_batch_events)
        };
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch-too-large",
            "Batch too large",
            format!("the batch has {} events; {limit}", lines.len()),
        )
        .into_response();
    }
    let (mut trace, tracestate) = request_trace(&headers);
    // The request's own span; each line's receive span hangs under it.
    let batch_span = spans::enabled()
        .then(|| {
            OpenSpan::start(
                "gateway.receive_batch",
                SpanKind::Server,
                client_trace(&headers),
                trace,
                received_at.into(),
                vec![
                    KeyValue::new("http.request.method", "POST"),
                    KeyValue::new("url.path", "/v1/events:batch"),
                    KeyValue::new("tenant.id", principal.tenant.clone()),
                    KeyValue::new("messaging.batch.message_count", lines.len() as i64),
                ],
            )
        })
        .flatten();
    if let Some(span) = &batch_span {
        trace.flags = if span.sampled() {
            trace.flags | 1
        } else {
            trace.flags & !1
        };
    }
    let mut results: Vec<Option<LineResult>> = vec![None; lines.len()];
    let mut submissions = Vec::new();
    for (slot, (line, bytes)) in lines.into_iter().enumerate() {
        let parsed = serde_json::from_slice::<BatchLine>(&bytes)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-batch-line",
                    "Invalid batch line",
                    format!(
                        "line {line} must be {{\"idempotencyKey\": string, \"event\": object}}: {e}"
                    ),
                )
            })
            .and_then(|parsed| {
                check_idempotency_key(&parsed.idempotency_key).map_err(|detail| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid-idempotency-key",
                        "Missing or invalid Idempotency-Key",
                        detail,
                    )
                })?;
                let value = Bytes::copy_from_slice(parsed.event.get().as_bytes());
                submission(
                    &state,
                    &principal,
                    parsed.idempotency_key,
                    value,
                    (trace.child(), Some(trace)),
                    tracestate.clone(),
                    received_at,
                )
            });
        match parsed {
            Ok(submission) => submissions.push((slot, line, submission)),
            Err(problem) => results[slot] = Some(line_result(line, Err(problem))),
        }
    }
    let permits = u32::try_from(submissions.len()).unwrap_or(u32::MAX);
    let permit = if permits == 0 {
        None
    } else {
        match Arc::clone(&state.inner.in_flight).try_acquire_many_owned(permits) {
            Ok(permit) => Some(permit),
            Err(_) => return overloaded_problem().into_response(),
        }
    };
    // Every line takes its key's turn now, in line order; then one task (not one per line)
    // writes them all concurrently, and finishes them even if the client goes away. Each line's
    // future is boxed where it is made: it is large, and is otherwise copied whole by each
    // collection it passes through.
    let (places, ingests): (Vec<_>, Vec<_>) = submissions
        .into_iter()
        .map(|(slot, line, submission)| {
            let span = receive_span(&submission);
            (
                (slot, line),
                Box::pin(ingest(state.clone(), submission).instrument(span)),
            )
        })
        .unzip();
    let outcomes = tokio::spawn(async move {
        let outcomes = futures::future::join_all(ingests).await;
        drop(permit);
        outcomes
    })
    .await
    .unwrap_or_else(|join| {
        tracing::error!(error = %join, "batch ingest task failed");
        places
            .iter()
            .map(|_| {
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "the line failed unexpectedly; retry with the same idempotencyKey",
                ))
            })
            .collect()
    });
    for ((slot, line), outcome) in places.into_iter().zip(outcomes) {
        results[slot] = Some(line_result(line, outcome));
    }
    let results: Vec<LineResult> = results.into_iter().flatten().collect();
    let accepted = results.iter().filter(|r| r.status == 202).count();
    if let Some(mut span) = batch_span {
        span.set(KeyValue::new("http.response.status_code", 200));
        span.end();
    }
    Json(BatchResults {
        accepted,
        rejected: results.len() - accepted,
        results,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_recognised() {
        let json = ["application/json"];
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/cloudevents+json",
        ] {
            assert!(is_media_type(ok, &json, true), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
            "json",
        ] {
            assert!(!is_media_type(bad, &json, true), "{bad}");
        }
        assert!(is_media_type(
            "application/x-ndjson",
            &["application/x-ndjson"],
            false
        ));
        assert!(!is_media_type(
            "application/foo+json",
            &["application/x-ndjson"],
            false
        ));
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        assert!(check_idempotency_key("k-1").is_ok());
        assert!(check_idempotency_key(&"k".repeat(255)).is_ok());
        assert!(check_idempotency_key(&"k".repeat(256)).is_err());
        assert!(check_idempotency_key("  ").is_err());
        assert!(check_idempotency_key("a\tb").is_err());
    }

    #[test]
    fn a_valid_traceparent_is_continued() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        headers.insert("tracestate", "v=1".parse().unwrap());
        let (trace, state) = request_trace(&headers);
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(trace.span_id, [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(state.as_deref(), Some("v=1"));
        headers.insert("traceparent", "garbage".parse().unwrap());
        let (fresh, state) = request_trace(&headers);
        assert_ne!(fresh.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            state, None,
            "tracestate is dropped with an invalid traceparent"
        );
    }
}
